"""The ``monitors`` config section: reward-hacking monitors of ``rayppo train`` (warn,
optionally stop), with its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class MonitorsConfig:
    """Reward-hacking monitors of ``rayppo train``: each warns (log line, ``alerts.jsonl`` and a
    W&B alert) when its sign shows for ``patience`` steps in a row; ``None`` turns a monitor off.
    See ``docs/chat-rlhf.md``."""

    stop: bool = False
    """Also stop training (after saving a checkpoint) when any monitor fires."""
    patience: int = 2
    """Consecutive steps a sign must persist before its monitor fires (noise is not a trend)."""
    baseline_steps: int = 3
    """The first this many steps set the baselines of the length and reward-std monitors."""
    length_drift: Optional[float] = 0.5
    """Fire when ``response/length_mean`` moves more than this fraction away from its baseline
    (0.5: longer than 1.5x or shorter than 0.5x)."""
    kl_max: Optional[float] = None
    """Fire when ``kl/mean`` (KL to the reference, per token) exceeds this bound."""
    reward_std_collapse: Optional[float] = 0.1
    """Fire when ``reward/std`` falls below this fraction of its baseline: the reward no longer
    tells samples apart, so the policy has collapsed or the reward saturated."""
    proxy_key: str = "reward/mean"
    """Metric of the optimised (proxy) reward."""
    gold_key: Optional[str] = "eval/accuracy"
    """Metric of the gold / held-out reward; ``None`` turns the divergence monitor off."""
    gold_drop: float = 0.02
    """Divergence: fire when the gold metric is this much below its best value while the proxy
    is higher than it was at that best step (the proxy rises, the gold falls)."""


def monitors_errors(cfg) -> list[str]:
    """Bounds of the ``monitors`` section."""
    errors = []
    mon = cfg.monitors
    if mon.patience < 1:
        errors.append(f"monitors.patience: must be >= 1, got {mon.patience!r}")
    if mon.baseline_steps < 1:
        errors.append(f"monitors.baseline_steps: must be >= 1, got {mon.baseline_steps!r}")
    for name in ("length_drift", "kl_max", "reward_std_collapse"):
        value = getattr(mon, name)
        if value is not None and not value > 0:
            errors.append(f"monitors.{name}: must be > 0 (or null to turn it off), got {value!r}")
    if mon.reward_std_collapse is not None and mon.reward_std_collapse >= 1:
        errors.append(f"monitors.reward_std_collapse: must be < 1 (a fraction of the baseline std), got {mon.reward_std_collapse!r}")
    if mon.gold_drop < 0:
        errors.append(f"monitors.gold_drop: must be >= 0, got {mon.gold_drop!r}")
    if not mon.proxy_key.strip():
        errors.append("monitors.proxy_key: must name a metric, e.g. 'reward/mean'")
    return errors
