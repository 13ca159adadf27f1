"""Runs that cannot learn stop and say so.

A step in which not one sample could be scored leaves nothing to update on; several in a row
mean a cause that will not go away by itself (a wrong token, a server that is down, an
environment that fails every conversation). :class:`UnscorableSteps` counts such steps and
ends the run at ``reward.max_unscorable_steps`` with :class:`RewardStall`, whose message
names each failing source's first problem, instead of spending every remaining step the
same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class RewardStall(RuntimeError):
    """No sample could be scored for ``reward.max_unscorable_steps`` training steps in a row."""


class UnscorableSteps:
    """Consecutive training steps in which not one sample could be scored."""

    def __init__(self, bound: int):
        self.bound = bound
        """The count that stops the run (``reward.max_unscorable_steps``); 0 never stops it."""
        self.count = 0

    def update(self, scores: np.ndarray, causes: Callable[[], list[str]]) -> None:
        """Count one step's ``scores`` (NaN = unscorable); raise :class:`RewardStall` when the
        count reaches the bound. ``causes`` (one line per failing source) is asked only then."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0 or np.isfinite(scores).any():
            self.count = 0
            return
        self.count += 1
        if self.bound and self.count >= self.bound:
            raise RewardStall(stall_message(self.count, self.bound, causes()))

    def reset(self) -> None:
        self.count = 0


def stall_message(steps: int, bound: int, causes: list[str]) -> str:
    head = (f"reward: no sample could be scored for {steps} consecutive steps "
            f"(reward.max_unscorable_steps={bound})")
    return "; ".join([head, *causes]) if causes else f"{head}; no source reported a cause"


def source_problem(name: str, kind: str, reasons: dict[str, int], first: str | None) -> str:
    """One source's line: ``source 'remote' (http): 64 request_failed; first: ...``."""
    counts = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
    return f"source {name!r} ({kind}): {counts}; first: {first or 'not reported'}"
