"""The ``tune:`` section of a run config: what ``rayppo sweep`` searches and how.

A section of :class:`pipeline.config.RayppoConfig` like the others (same docstring-per-field
convention, validated with the rest); it lives in its own module to keep the schema readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config.search_space import search_space_errors


@dataclass
class TuneConfig:
    """``rayppo sweep``: a Ray Tune search over any config field; every trial is a whole run
    (its own engines and learner group) reserved as one placement group."""

    name: Optional[str] = None
    """Sweep name: its directory under ``storage_path`` and the W&B group; ``None`` = run_name."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """Dotted config field -> one sampler, e.g. ``learner.lr: {loguniform: [1.0e-5, 1.0e-3]}``.
    Samplers: ``loguniform``, ``uniform``, ``quniform`` ([low, high, q]), ``randint``,
    ``choice`` (list of values), ``grid`` (list of values, every one is run)."""
    metric: str = "eval/accuracy"
    """Metric the sweep optimises (any key of ``metrics.jsonl``)."""
    mode: str = "max"
    """``max`` or ``min`` of ``metric``."""
    num_samples: int = 1
    """Trials drawn from the search space (each grid point is run this many times)."""
    max_concurrent_trials: Optional[int] = None
    """Trials running at once; ``None`` = as many as the cluster holds."""
    scheduler: str = "fifo"
    """``fifo`` (run every trial to the end), ``asha`` (stop weak trials early) or ``pbt``
    (weak trials continue from a strong trial's checkpoint with perturbed hyperparameters)."""
    grace_period: int = 1
    """ASHA: steps every trial runs before it may be stopped."""
    reduction_factor: float = 2.0
    """ASHA: keep the best 1/reduction_factor of trials at each rung."""
    perturbation_interval: int = 2
    """PBT: steps between exploit/explore decisions; trials checkpoint at this interval."""
    quantile_fraction: float = 0.25
    """PBT: the bottom fraction of trials copies a checkpoint from the top fraction."""
    resample_probability: float = 0.25
    """PBT: chance a perturbed hyperparameter is redrawn from ``search_space`` instead of scaled."""
    pbt_synch: bool = False
    """PBT: every trial waits at each perturbation step until the whole population is there,
    then the weak ones copy the strong ones. Deterministic exploit order; faster trials idle,
    and every trial restarts from its checkpoint after each perturbation."""
    driver_cpus: float = 1.0
    """CPUs of each trial's driver bundle (the process running the trial's step loop)."""


def tune_errors(cfg, base_valid: bool) -> list[str]:
    """Rules of the ``tune`` section (the search space itself: :mod:`pipeline.config.search_space`)."""
    tc = cfg.tune
    errors = []
    if tc.name is not None and (not tc.name.strip() or "/" in tc.name or tc.name in (".", "..")):
        errors.append(f"tune.name: must be a plain directory name (no '/'), got {tc.name!r}")
    if not tc.metric.strip():
        errors.append("tune.metric: must name a metric, e.g. 'eval/accuracy'")
    if tc.scheduler == "asha" and tc.grace_period > cfg.total_steps:
        errors.append(
            f"tune.grace_period ({tc.grace_period}) must be <= total_steps ({cfg.total_steps}): "
            "ASHA never stops a trial before its grace period"
        )
    if tc.scheduler != "fifo" and tc.metric.startswith("eval/") and cfg.eval_every == 0:
        errors.append(
            f"tune.metric={tc.metric!r} is measured every eval_every steps, and eval_every is 0: "
            f"the {tc.scheduler} scheduler would only see its value before training"
        )
    if tc.scheduler == "pbt" and tc.perturbation_interval >= cfg.total_steps:
        errors.append(
            f"tune.perturbation_interval ({tc.perturbation_interval}) must be < total_steps "
            f"({cfg.total_steps}): otherwise PBT never perturbs a trial"
        )
    return errors + search_space_errors(cfg, base_valid=base_valid and not errors)
