"""Where the model behind a user-given path lives: a model directory, an export, a checkpoint.

``rayppo chat`` and ``rayppo feedback add-tasks`` accept any of::

    runs/x/policy                    an HF directory (an export, ``rayppo sft`` output, ...)
    runs/x/checkpoints/step_000120   a checkpoint: its ``policy/``
    runs/x/checkpoints/latest        the same through the ``latest`` link
    runs/x/checkpoints               a checkpoint directory: ``latest/policy``
    owner/name                       a hub id (only when no such local path exists)

and resolve it here, before anything loads, so a wrong path fails with a sentence that says
what was looked for.
"""

from __future__ import annotations

import os

_CANDIDATES = ("", "policy", os.path.join("latest", "policy"))


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and not path.endswith("/")


def resolve_model_path(path: str) -> str:
    """The HF directory (or hub id) that ``path`` names; ``ValueError`` saying why not."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"model path must be a non-empty string, got {path!r}")
    expanded = os.path.expanduser(path)
    if not os.path.exists(expanded):
        if _looks_like_hub_id(path):
            return path
        raise ValueError(f"model path {path!r} does not exist")
    if not os.path.isdir(expanded):
        raise ValueError(f"model path {path!r} is a file, not a model directory or checkpoint")
    for sub in _CANDIDATES:
        candidate = os.path.join(expanded, sub) if sub else expanded
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return os.path.normpath(candidate)
    looked = ", ".join(os.path.join(path, sub, "config.json") if sub else os.path.join(path, "config.json")
                       for sub in _CANDIDATES)
    raise ValueError(
        f"{path!r} is not a model directory, an export or a checkpoint: none of {looked} exists"
    )
