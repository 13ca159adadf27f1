"""Rollout batches submitted ahead of training (``rollout.max_staleness``), and their
checkpoint form.

A batch is submitted to the engines with the sync check that is due (if any) and collected
when its step trains on it; the check is settled on collection, before any sample is used.
A checkpoint stores each in-flight batch already generated and checked: the weights that
sampled it are gone after the save, so a resume could not reproduce it otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from pipeline.controller.sync import PendingCheck
from rollout_workers.types import RolloutBatch


@dataclass
class InFlight:
    """One training batch on its way: ``step`` is the step that trains on it (and seeds its
    sampling), ``rows`` its prompts' rows in the training set."""

    step: int
    rows: list[int]
    submitted: Any = None
    """:class:`rollout_workers.group.Submitted` until collected."""
    check: Optional[PendingCheck] = None
    """The sync check its engines score beside it, until settled."""
    batch: Optional[RolloutBatch] = None
    metrics: dict[str, float] = field(default_factory=dict)
    """What settling its check measured (logged with the step that trains on it)."""


def to_state(entry: InFlight) -> dict:
    """A collected, checked entry as JSON-able data (token ids and logprobs are exact)."""
    if entry.batch is None or entry.check is not None:
        raise ValueError(f"in-flight batch of step {entry.step} must be collected and checked before saving")
    batch = asdict(entry.batch)
    batch.pop("probe_scores")  # already settled
    return {"step": entry.step, "rows": list(entry.rows), "batch": batch, "metrics": dict(entry.metrics)}


def from_state(state: dict) -> InFlight:
    batch = RolloutBatch(**state["batch"])
    return InFlight(step=int(state["step"]), rows=list(state["rows"]), batch=batch, metrics=dict(state["metrics"]))
