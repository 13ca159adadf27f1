"""Reward functions used by integration tests through ``reward.function=module:function``."""

from __future__ import annotations

_calls = {"n": 0}


def digit_fraction(prompt: str, completion: str, answer) -> float:
    """Share of digits in the completion: varies across samples even for a random model."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def flaky_digit_fraction(prompt: str, completion: str, answer) -> float:
    """Like ``digit_fraction`` but fails on every third call and returns NaN on every fifth."""
    _calls["n"] += 1
    if _calls["n"] % 3 == 0:
        raise RuntimeError("reward server unavailable")
    if _calls["n"] % 5 == 0:
        return float("nan")
    return digit_fraction(prompt, completion, answer)
