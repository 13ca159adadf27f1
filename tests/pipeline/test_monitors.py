"""Reward-hacking monitors on synthetic metric streams: each fires on its sign, after its patience,
once per episode, and stops the run only when asked."""

from __future__ import annotations

import json

from pipeline.config.monitors import MonitorsConfig
from pipeline.controller.monitors import Monitors


class RecordingLogger:
    def __init__(self):
        self.alerts = []

    def alert(self, title, text):
        self.alerts.append((title, text))


def _run(cfg, stream, log_dir=None):
    logger = RecordingLogger()
    monitors = Monitors(cfg, logger, log_dir)
    stops = [monitors.check(step, metrics) for step, metrics in stream]
    return monitors, logger, stops


def _steady(step, **overrides):
    metrics = {"response/length_mean": 10.0, "reward/std": 0.5, "reward/mean": 0.1 * step, "kl/mean": 0.01}
    metrics.update(overrides)
    return step, metrics


def test_quiet_run_raises_nothing():
    monitors, logger, stops = _run(MonitorsConfig(kl_max=0.1), [_steady(s) for s in range(1, 20)])
    assert monitors.alerts == [] and logger.alerts == [] and not any(stops)


def test_length_drift_fires_after_patience_once(tmp_path):
    cfg = MonitorsConfig(length_drift=0.5, patience=2, baseline_steps=3)
    lengths = [10, 10, 10, 12, 16, 17, 18, 19]
    stream = [_steady(s, **{"response/length_mean": float(n)}) for s, n in enumerate(lengths, start=1)]
    monitors, logger, stops = _run(cfg, stream, str(tmp_path))
    (alert,) = monitors.alerts
    # 16 is the first length beyond 1.5 x 10; the second one in a row (17, step 6) fires.
    assert alert["monitor"] == "length_drift" and alert["step"] == 6
    assert "1.70x its baseline 10.0" in alert["message"]
    assert logger.alerts[0][0] == "rayppo monitor: length_drift"
    assert not any(stops)
    with open(tmp_path / "alerts.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [6]


def test_shrinking_replies_drift_too():
    cfg = MonitorsConfig(length_drift=0.5, patience=1, baseline_steps=2)
    stream = [_steady(1), _steady(2), _steady(3, **{"response/length_mean": 4.0})]
    monitors, _, _ = _run(cfg, stream)
    assert [a["step"] for a in monitors.alerts] == [3] and "0.40x" in monitors.alerts[0]["message"]


def test_monitor_fires_again_only_after_the_sign_clears():
    cfg = MonitorsConfig(kl_max=0.1, patience=1)
    kls = [0.2, 0.3, 0.05, 0.4]
    monitors, _, _ = _run(cfg, [_steady(s, **{"kl/mean": k}) for s, k in enumerate(kls, 1)])
    assert [(a["monitor"], a["step"]) for a in monitors.alerts] == [("kl_bound", 1), ("kl_bound", 4)]


def test_reward_std_collapse():
    cfg = MonitorsConfig(reward_std_collapse=0.2, patience=2, baseline_steps=2)
    stds = [0.5, 0.5, 0.3, 0.05, 0.04]
    monitors, _, _ = _run(cfg, [_steady(s, **{"reward/std": v}) for s, v in enumerate(stds, 1)])
    (alert,) = monitors.alerts
    assert alert["monitor"] == "reward_std_collapse" and alert["step"] == 5


def test_proxy_rising_while_gold_falls_is_over_optimisation():
    cfg = MonitorsConfig(gold_key="eval/accuracy", proxy_key="reward/mean", gold_drop=0.05, patience=2, length_drift=None)
    stream = [(0, {"eval/accuracy": 0.6})]
    gold = {5: 0.7, 10: 0.8, 15: 0.72, 20: 0.70, 25: 0.69}
    for step in range(1, 26):
        metrics = {"reward/mean": 0.1 * step, "reward/std": 0.5}
        if step in gold:
            metrics["eval/accuracy"] = gold[step]
        stream.append((step, metrics))
    monitors, _, stops = _run(cfg, stream)
    (alert,) = monitors.alerts
    # Gold is 0.08 below its best (step 10) at step 15 and still at step 20: fires at 20.
    assert alert["monitor"] == "proxy_gold_divergence" and alert["step"] == 20
    assert "since step 10" in alert["message"] and "0.8 -> 0.7" in alert["message"]
    assert not any(stops)


def test_gold_falling_with_the_proxy_is_not_divergence():
    cfg = MonitorsConfig(gold_key="eval/accuracy", gold_drop=0.05, patience=1)
    stream = [(1, {"reward/mean": 0.5, "eval/accuracy": 0.8}), (2, {"reward/mean": 0.3, "eval/accuracy": 0.6})]
    monitors, _, _ = _run(cfg, stream)
    assert monitors.alerts == []


def test_gold_best_before_training_compares_with_the_first_proxy():
    cfg = MonitorsConfig(gold_key="eval/accuracy", gold_drop=0.05, patience=1)
    stream = [(0, {"eval/accuracy": 0.8}), (1, {"reward/mean": 0.1}), (2, {"reward/mean": 0.4, "eval/accuracy": 0.6})]
    monitors, _, _ = _run(cfg, stream)
    assert [a["step"] for a in monitors.alerts] == [2]


def test_stop_is_returned_and_remembered():
    cfg = MonitorsConfig(kl_max=0.1, patience=1, stop=True)
    monitors, _, stops = _run(cfg, [_steady(1), _steady(2, **{"kl/mean": 0.5})])
    assert stops == [False, True] and monitors.stopped


def test_restart_forgets_steps_it_will_log_again():
    cfg = MonitorsConfig(kl_max=0.1, patience=2)
    monitors = Monitors(cfg)
    for step, kl in [(1, 0.01), (2, 0.01), (3, 0.5)]:
        monitors.check(step, _steady(step, **{"kl/mean": kl})[1])
    monitors.check(2, _steady(2)[1])  # restarted from the step-1 checkpoint
    assert [s for s, _ in monitors.history] == [1, 2]


def test_disabled_monitors_and_missing_metrics():
    cfg = MonitorsConfig(length_drift=None, reward_std_collapse=None, kl_max=None, gold_key=None, patience=1)
    stream = [_steady(1), _steady(2, **{"response/length_mean": 100.0, "reward/std": 0.0, "kl/mean": 9.0})]
    monitors, _, _ = _run(cfg, stream)
    assert monitors.alerts == []
    # NaN metrics (a step without scorable samples) are skipped, not compared.
    monitors, _, _ = _run(MonitorsConfig(patience=1), [_steady(s) for s in (1, 2, 3)] + [_steady(4, **{"reward/std": float("nan")})])
    assert monitors.alerts == []
