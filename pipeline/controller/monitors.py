"""Reward-hacking monitors: warn, and optionally stop, when a run optimises the reward instead
of the behaviour the reward stands for.

The driver calls :meth:`Monitors.check` once per step with the step's logged metrics. Each
monitor looks for one sign (settings in :class:`pipeline.config.monitors.MonitorsConfig`):

``length_drift``
    ``response/length_mean`` moved more than ``length_drift`` (a fraction) away from its
    baseline, the mean of the first ``baseline_steps`` steps. Reward models and judges often
    prefer longer replies; a policy that finds that out grows its replies.
``kl_bound``
    ``kl/mean``, the per-token KL to the reference, is above ``kl_max``: the policy has moved
    further than the reward's training data covers, where its scores stop meaning much.
``reward_std_collapse``
    ``reward/std`` fell below ``reward_std_collapse`` times its baseline: every sample scores
    alike, so either the policy collapsed onto one reply or the reward saturated; either way
    the advantages carry no signal.
``proxy_gold_divergence``
    the gold metric (``gold_key``, e.g. ``eval/accuracy`` on held-out prompts or a weight-0
    ``reward/<gold>/mean``) is ``gold_drop`` below its best value while the optimised proxy
    (``proxy_key``) is higher than at that best step: the proxy still rises, the gold falls,
    the signature of reward over-optimisation.

A sign must hold for ``patience`` consecutive steps on which its metrics were logged before its
monitor fires; it fires once and again only after the sign cleared. Firing logs a warning,
appends a line to ``alerts.jsonl`` in the run's log directory, raises a W&B alert when a W&B run
is live, and with ``monitors.stop`` makes :meth:`check` return True: the driver saves a
checkpoint and stops.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Callable, Optional

logger = logging.getLogger("rayppo.monitors")

History = list[tuple[int, dict[str, float]]]
"""(step, that step's finite metrics), oldest first."""


def _series(history: History, key: str) -> list[tuple[int, float]]:
    return [(step, m[key]) for step, m in history if key in m]


def _baseline(history: History, key: str, steps: int) -> Optional[float]:
    values = [v for _, v in _series(history, key)[:steps]]
    return sum(values) / len(values) if len(values) == steps else None


def length_drift(history: History, cfg) -> Optional[str]:
    key = "response/length_mean"
    base = _baseline(history, key, cfg.baseline_steps)
    if base is None or key not in history[-1][1] or base <= 0 or cfg.length_drift is None:
        return None
    now = history[-1][1][key]
    ratio = now / base
    if abs(ratio - 1.0) <= cfg.length_drift:
        return None
    return (
        f"response length {now:.1f} tokens is {ratio:.2f}x its baseline {base:.1f} "
        f"(bound: within {cfg.length_drift:.0%})"
    )


def kl_bound(history: History, cfg) -> Optional[str]:
    now = history[-1][1].get("kl/mean")
    if cfg.kl_max is None or now is None or now <= cfg.kl_max:
        return None
    return f"KL to the reference {now:.4f} per token is above monitors.kl_max={cfg.kl_max:g}"


def reward_std_collapse(history: History, cfg) -> Optional[str]:
    key = "reward/std"
    base = _baseline(history, key, cfg.baseline_steps)
    if cfg.reward_std_collapse is None or base is None or base <= 0 or key not in history[-1][1]:
        return None
    now = history[-1][1][key]
    if now >= cfg.reward_std_collapse * base:
        return None
    return (
        f"reward std {now:.4g} fell below {cfg.reward_std_collapse:g} x its baseline {base:.4g}: "
        "samples all score alike"
    )


def proxy_gold_divergence(history: History, cfg) -> Optional[str]:
    if cfg.gold_key is None or cfg.gold_key not in history[-1][1]:
        return None
    gold = _series(history, cfg.gold_key)
    proxy = dict(_series(history, cfg.proxy_key))
    best_step, best = max(gold, key=lambda sv: (sv[1], -sv[0]))
    step, now = gold[-1]
    # The proxy when the gold was best; before the first step (gold measured at step 0) its
    # first value stands for it.
    earlier = [s for s in proxy if s <= best_step] or sorted(proxy)[:1]
    if step == best_step or now >= best - cfg.gold_drop or step not in proxy or not earlier:
        return None
    proxy_then, proxy_now = proxy[max(earlier)], proxy[step]
    if proxy_now <= proxy_then:
        return None
    return (
        f"{cfg.proxy_key} rose {proxy_then:.4g} -> {proxy_now:.4g} since step {best_step} while "
        f"{cfg.gold_key} fell {best:.4g} -> {now:.4g}: the proxy is being over-optimised"
    )


MONITORS: dict[str, Callable[[History, object], Optional[str]]] = {
    "length_drift": length_drift,
    "kl_bound": kl_bound,
    "reward_std_collapse": reward_std_collapse,
    "proxy_gold_divergence": proxy_gold_divergence,
}
_KEYS = {
    "length_drift": ("response/length_mean",),
    "kl_bound": ("kl/mean",),
    "reward_std_collapse": ("reward/std",),
}


class Monitors:
    """The run's monitors; :meth:`check` once per logged step."""

    def __init__(self, cfg, metrics_logger=None, log_dir: Optional[str] = None):
        self.cfg = cfg
        self.metrics_logger = metrics_logger
        self.alerts_path = os.path.join(log_dir, "alerts.jsonl") if log_dir else None
        self.history: History = []
        self.streak = {name: 0 for name in MONITORS}
        self.alerts: list[dict] = []
        self.stopped = False

    def _keys(self, name: str) -> tuple[str, ...]:
        if name == "proxy_gold_divergence":
            return (self.cfg.gold_key,) if self.cfg.gold_key else ()
        return _KEYS[name]

    def check(self, step: int, metrics: dict[str, float]) -> bool:
        """Record ``step``'s metrics and run every monitor; True when the run should stop."""
        # A restart from an earlier checkpoint logs its steps again: forget the abandoned ones.
        self.history = [(s, m) for s, m in self.history if s < step]
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.history.append((step, finite))
        stop = False
        for name, monitor in MONITORS.items():
            if not any(k in finite for k in self._keys(name)):
                continue  # not measured this step: the streak neither grows nor breaks
            message = monitor(self.history, self.cfg)
            self.streak[name] = self.streak[name] + 1 if message else 0
            if message and self.streak[name] == self.cfg.patience:
                self._fire(step, name, message)
                stop = stop or self.cfg.stop
        self.stopped = self.stopped or stop
        return stop

    def _fire(self, step: int, name: str, message: str) -> None:
        alert = {"step": step, "monitor": name, "message": message, "stop": self.cfg.stop}
        self.alerts.append(alert)
        action = "stopping the run" if self.cfg.stop else "warning"
        logger.warning("monitor %s at step %d (%s): %s", name, step, action, message)
        if self.alerts_path:
            os.makedirs(os.path.dirname(self.alerts_path), exist_ok=True)
            with open(self.alerts_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(alert) + "\n")
        if self.metrics_logger is not None:
            self.metrics_logger.alert(f"rayppo monitor: {name}", f"step {step}: {message}")
