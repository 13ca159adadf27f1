"""Runs that cannot learn stop: the count of consecutive steps without a scorable sample, the
message naming each failing source, and the bound's validation. The driver's end of it runs
for real in ``tests/integration/test_reward_sources.py``."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.rewards import RewardSet, RewardStall, ScoreRequest, UnscorableSteps

NAN = math.nan


def no_cause() -> list[str]:
    raise AssertionError("causes are asked for only when the run stops")


def test_stops_at_the_bound_of_consecutive_unscorable_steps():
    steps = UnscorableSteps(3)
    steps.update(np.array([NAN, NAN]), no_cause)
    steps.update(np.array([NAN, NAN]), no_cause)
    steps.update(np.array([NAN, 0.5]), no_cause)  # one scorable sample resets the count
    assert steps.count == 0
    steps.update(np.array([NAN, NAN]), no_cause)
    steps.update(np.array([NAN, NAN]), no_cause)
    assert steps.count == 2
    with pytest.raises(RewardStall) as info:
        steps.update(np.array([NAN, NAN]), lambda: ["source 'remote' (http): 2 request_failed; first: HTTP 401"])
    assert str(info.value) == (
        "reward: no sample could be scored for 3 consecutive steps (reward.max_unscorable_steps=3); "
        "source 'remote' (http): 2 request_failed; first: HTTP 401"
    )
    assert isinstance(info.value, RuntimeError)


def test_zero_never_stops_and_reset_forgets():
    never = UnscorableSteps(0)
    for _ in range(10):
        never.update(np.array([NAN]), no_cause)
    assert never.count == 10
    once = UnscorableSteps(1)
    with pytest.raises(RewardStall, match="no source reported a cause"):
        once.update(np.array([NAN]), lambda: [])
    once.reset()
    assert once.count == 0


def test_problems_name_each_counted_source_with_its_first_problem():
    cfg = load_config(None, [
        "reward.sources=[{kind: similarity, name: chrf, metric: chrf},"
        " {kind: similarity, name: bleu, metric: bleu, weight: 0}]",
    ])
    rs = RewardSet.from_config(cfg)
    scores, metrics = rs.score(ScoreRequest([[{"role": "user", "content": "hi"}]] * 2, ["a", "b"]))
    assert np.isnan(scores).all() and metrics["reward/bleu/no_reference"] == 2
    # The monitor (weight 0) cannot make a sample unscorable, so it is not a cause.
    [line] = rs.problems()
    assert line.startswith("source 'chrf' (similarity): 2 no_reference; first: sample 0 ")
    rs.shutdown()


def test_max_unscorable_steps_is_validated():
    assert load_config(None).reward.max_unscorable_steps == 3
    assert load_config(None, ["reward.max_unscorable_steps=0"]).reward.max_unscorable_steps == 0
    with pytest.raises(ValueError, match=r"reward\.max_unscorable_steps: must be >= 0"):
        load_config(None, ["reward.max_unscorable_steps=-1"])


def test_a_multiturn_environment_names_its_first_error(tiny_model):
    from transformers import AutoTokenizer

    from pipeline.controller.episodes import MultiTurn
    from tests.pipeline.test_multiturn_driver import _batch, _cfg
    from tests.rollout_workers.test_multiturn_loop import rows

    mt = MultiTurn(_cfg(tiny_model), AutoTokenizer.from_pretrained(tiny_model), rows(1))
    [line] = mt.problems(_batch())  # one of its three conversations failed, with "boom"
    assert line.startswith("environment ") and line.endswith(": 1 unscorable conversations; first: boom")


def test_the_cli_prints_why_the_run_stopped_and_exits_1(monkeypatch, capsys):
    from pipeline import cli

    def stalls(args):
        raise RewardStall("reward: no sample could be scored for 2 consecutive steps; first: HTTP 401")

    monkeypatch.setitem(cli.COMMANDS, "train", cli.Command(help="", run=stalls))
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "debug.yaml")
    assert cli.main(["train", config]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rayppo train: stopped: reward: no sample could be scored") and "HTTP 401" in err
    assert "Traceback" not in err
