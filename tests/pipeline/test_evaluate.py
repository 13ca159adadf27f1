"""``rayppo eval``'s arithmetic without Ray: the Wilson interval, win rates with ties, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.stages.evaluate import table, wilson_interval, win_rate, write_json


def test_wilson_interval_known_values():
    # 8 of 10 at 95%: the textbook Wilson interval is (0.490, 0.943).
    rate, low, high = wilson_interval(8, 10)
    assert rate == 0.8 and low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # All wins still leaves room below 1; none leaves room above 0.
    assert wilson_interval(20, 20)[1] == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 20)[2] == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_win_rate_counts_ties_half_and_skips_unscorable():
    a = np.array([1.0, 2.0, 3.0, 0.5, np.nan, 2.0])
    b = np.array([0.0, 2.0, 4.0, 0.1, 1.0, np.nan])
    out = win_rate(a, b, "rm")
    assert (out.wins, out.ties, out.losses, out.n) == (2, 1, 1, 4)
    assert out.rate == pytest.approx(2.5 / 4)
    assert (out.low, out.high) == pytest.approx(wilson_interval(2.5, 4)[1:])


def test_win_rate_from_pairwise_verdicts():
    verdicts = np.array([1.0, 0.0, 0.5, 1.0, np.nan, 0.75])  # 0.75: the two orders disagreed half
    out = win_rate(verdicts, None, "judge")
    assert out.n == 5 and out.wins == 2 and out.ties == 2 and out.rate == pytest.approx(3.25 / 5)


def test_report_table_and_json(tmp_path):
    report = {
        "models": {"model": "a", "against": "b"},
        "prompts": 3,
        "metrics": {"model": {"reward/mean": 0.5, "rm/mean": float("nan")}, "against": {"reward/mean": 0.25}},
        "win_rate": win_rate(np.array([1.0, 0.0, 1.0]), None, "judge").to_dict(),
    }
    text = table(report)
    assert "reward/mean" in text and "0.5" in text and "0.25" in text
    assert "win rate of model over against by judge: 0.667" in text
    path = write_json(str(tmp_path / "out" / "eval.json"), report)
    saved = json.loads(open(path).read())  # strict JSON: NaN became null
    assert saved["metrics"]["model"]["rm/mean"] is None and saved["win_rate"]["n"] == 3


def test_cli_eval_and_serve_reward_arguments():
    from pipeline.cli import COMMANDS, parse

    args = parse(["eval", "configs/debug.yaml", "model.path=x", "--against", "other", "--by", "rm", "--limit", "5"])
    assert (args.config, args.overrides, args.against, args.by, args.limit, args.output) == (
        "configs/debug.yaml", ["model.path=x"], "other", "rm", 5, None)
    args = parse(["serve-reward", "configs/debug.yaml", "reward.server.port=9000"])
    assert args.overrides == ["reward.server.port=9000"] and COMMANDS["serve-reward"].takes_config
