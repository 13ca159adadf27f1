"""The human-feedback app: raters compare, rate and chat; their ratings become preference pairs,
reward files and win rates.

``storage`` (database), ``assign`` (who gets what, taking ratings in), ``server`` with ``api``
and ``pages`` (FastAPI; what the two share: ``web``), ``live_chat``, ``rating_tasks`` (where
items come from), ``export``, ``stats`` and ``cli`` (``rayppo feedback ...``). Guide: ``docs/feedback.md``.
"""
