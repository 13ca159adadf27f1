"""Weight-sync verification: the probe batch, the difference measure and verify()."""

import numpy as np
import pytest

from pipeline.controller.sync import PendingCheck, ProbeBatch, WeightSyncError, make_probe, probe_difference, settle, verify
from pipeline.stages import init_model


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        init_model.render_chat(
            [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": str(a + b)},
            ]
        )
        for a in range(10)
        for b in range(5)
    ]
    return init_model.train_tokenizer(texts, 300)


# ----------------------------------------------------------------------------- make_probe
def test_make_probe_uses_answers_and_appends_eos(tokenizer):
    eos = tokenizer.eos_token_id
    assert eos is not None and tokenizer.eos_token == "<|im_end|>"
    prompt_ids = [[5, 6, 7], [8], [9, 10]]
    probe = make_probe(tokenizer, prompt_ids, ["42", None, "7"], size=2)
    assert isinstance(probe, ProbeBatch)
    assert probe.prompt_ids == [[5, 6, 7], [8]]
    assert probe.prompt_ids[0] is not prompt_ids[0]  # copied, not aliased
    first, second = probe.response_ids
    # Digits are single tokens, so "42" is exactly two tokens, then the eos.
    assert len(first) == 3 and first[-1] == eos
    assert first[:-1] == tokenizer.encode("42", add_special_tokens=False)
    assert tokenizer.decode(first[:-1]) == "42"
    # No reference answer: the stock reply "ok".
    assert second == tokenizer.encode("ok", add_special_tokens=False) + [eos]
    assert tokenizer.decode(second[:-1]) == "ok"
    assert eos not in first[:-1] and eos not in second[:-1]


def test_make_probe_size_larger_than_data_and_non_string_answers(tokenizer):
    probe = make_probe(tokenizer, [[1], [2]], [12, 3.5], size=10)
    assert probe.prompt_ids == [[1], [2]]
    assert tokenizer.decode(probe.response_ids[0][:-1]) == "12"
    assert tokenizer.decode(probe.response_ids[1][:-1]) == "3.5"
    assert all(r[-1] == tokenizer.eos_token_id for r in probe.response_ids)


def test_make_probe_cuts_responses_to_max_tokens(tokenizer):
    probe = make_probe(tokenizer, [[1]], ["123456"], size=1, max_tokens=4)
    assert probe.response_ids[0] == tokenizer.encode("1234", add_special_tokens=False)


class _NoEosTokenizer:
    eos_token_id = None

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return [ord(c) for c in text]


def test_make_probe_without_eos_token():
    probe = make_probe(_NoEosTokenizer(), [[1, 2]], ["ab"], size=1)
    assert probe.response_ids == [[97, 98]]


# ----------------------------------------------------------------------------- probe_difference
def test_probe_difference_is_the_token_weighted_mean_abs_diff():
    engine = [[0.0, -1.0], [-2.0]]
    learner = [np.array([0.5, -1.0]), np.array([-1.0])]
    # |0 - 0.5|, |-1 + 1|, |-2 + 1| -> (0.5 + 0 + 1) / 3 tokens (not mean of per-sequence means).
    assert probe_difference(engine, learner) == pytest.approx(0.5)
    assert probe_difference([[-1.0, -2.0, -3.0]], [np.array([-1.0, -2.0, -3.0])]) == 0.0
    assert probe_difference([], []) == 0.0


def test_probe_difference_rejects_missing_or_misshapen_engine_output():
    learner = [np.array([-1.0, -2.0]), np.array([-3.0])]
    with pytest.raises(WeightSyncError, match="1 sequences, expected 2"):
        probe_difference([[-1.0, -2.0]], learner)
    with pytest.raises(WeightSyncError, match="sequence 0, expected 2"):
        probe_difference([[-1.0], [-3.0]], learner)


def test_probe_difference_nan_propagates():
    assert np.isnan(probe_difference([[np.nan]], [np.array([0.0])]))


# ----------------------------------------------------------------------------- verify
class _Learners:
    def __init__(self, scores):
        self.scores = scores
        self.calls = []

    def score(self, prompt_ids, response_ids):
        self.calls.append((prompt_ids, response_ids))
        return self.scores


class _Rollouts:
    def __init__(self, per_engine):
        self.per_engine = per_engine
        self.calls = []

    def score(self, prompt_ids, response_ids):
        self.calls.append((prompt_ids, response_ids))
        return self.per_engine


PROBE = ProbeBatch(prompt_ids=[[1, 2], [3]], response_ids=[[4, 5], [6, 7, 8]])
LEARNER = [np.array([-1.0, -2.0]), np.array([-0.5, -0.25, -3.0])]


def test_verify_returns_the_worst_engine_difference():
    learners = _Learners(LEARNER)
    engine0 = [[-1.0, -2.0], [-0.5, -0.25, -3.0]]  # identical
    engine1 = [[-1.0005, -2.0], [-0.5, -0.25, -3.001]]  # (0.0005 + 0.001) / 5 = 3e-4
    rollouts = _Rollouts([engine0, engine1])
    worst = verify(learners, rollouts, PROBE, tolerance=2e-3, version=4)
    assert worst == pytest.approx(3e-4, rel=1e-6)
    assert learners.calls == [(PROBE.prompt_ids, PROBE.response_ids)]
    assert rollouts.calls == [(PROBE.prompt_ids, PROBE.response_ids)]


def test_verify_raises_naming_the_engine_and_the_tolerance():
    good = [[-1.0, -2.0], [-0.5, -0.25, -3.0]]
    stale = [[-1.5, -2.5], [-0.5, -0.25, -3.0]]  # (0.5 + 0.5) / 5 = 0.2
    with pytest.raises(WeightSyncError) as err:
        verify(_Learners(LEARNER), _Rollouts([good, stale]), PROBE, tolerance=2e-3, version=7)
    message = str(err.value)
    assert "rollout engine 1" in message
    assert "rollout.probe_tolerance=0.002" in message
    assert "policy version 7" in message
    assert "0.2 >" in message
    assert isinstance(err.value, RuntimeError)


def test_verify_fails_on_the_first_disagreeing_engine():
    bad = [[0.0, 0.0], [0.0, 0.0, 0.0]]
    good = [[-1.0, -2.0], [-0.5, -0.25, -3.0]]
    with pytest.raises(WeightSyncError, match="rollout engine 0 "):
        verify(_Learners(LEARNER), _Rollouts([bad, good]), PROBE, tolerance=0.1, version=1)


def test_verify_difference_equal_to_tolerance_passes_and_nan_fails():
    off = [[-1.25, -2.0], [-0.5, -0.25, -3.0]]  # 0.25 / 5 = 0.05 exactly representable
    assert verify(_Learners(LEARNER), _Rollouts([off]), PROBE, tolerance=0.05, version=2) == 0.05
    nan = [[np.nan, -2.0], [-0.5, -0.25, -3.0]]
    with pytest.raises(WeightSyncError, match="rollout engine 0"):
        verify(_Learners(LEARNER), _Rollouts([nan]), PROBE, tolerance=1.0, version=2)


# ----------------------------------------------------------------------------- settle
# The pipeline path: engines hand in their probe scores from ``generate``; the learner's
# scores were started at sync time. (Real engines and learners: tests/integration.)
class _PendingLearners:
    def __init__(self, scores):
        self.scores = scores
        self.gathered = []

    def gather_scores(self, refs):
        self.gathered.append(refs)
        return self.scores


def test_settle_compares_every_engine_with_the_learner_scores_started_at_sync():
    learners = _PendingLearners(LEARNER)
    pending = PendingCheck(version=3, learner_refs=["ref0"])
    engines = [[[-1.0, -2.0], [-0.5, -0.25, -3.0]], [[-1.0005, -2.0], [-0.5, -0.25, -3.001]]]
    metrics = settle(learners, pending, engines, engines=2, tolerance=2e-3)
    assert metrics["sync/probe_diff"] == pytest.approx(3e-4, rel=1e-6)
    assert metrics["sync/check_seconds"] >= 0
    assert learners.gathered == [["ref0"]]


def test_settle_fails_for_a_stale_or_missing_engine():
    good = [[-1.0, -2.0], [-0.5, -0.25, -3.0]]
    stale = [[-1.5, -2.5], [-0.5, -0.25, -3.0]]
    with pytest.raises(WeightSyncError, match="rollout engine 1 .*policy version 5"):
        settle(_PendingLearners(LEARNER), PendingCheck(5, []), [good, stale], engines=2, tolerance=2e-3)
    with pytest.raises(WeightSyncError, match="1 of 2 rollout engines scored the probe"):
        settle(_PendingLearners(LEARNER), PendingCheck(5, []), [good], engines=2, tolerance=2e-3)


def test_eval_check_merges_with_the_step_check_instead_of_replacing_it():
    from pipeline.stages.train import merge_checks

    step = {"sync/probe_diff": 2e-6, "sync/check_seconds": 0.5, "sync/seconds": 0.3}
    evaluation = {"sync/probe_diff": 1e-6, "sync/check_seconds": 0.25, "eval/accuracy": 0.5}
    merged = merge_checks(step, evaluation)
    assert merged == {"sync/probe_diff": 2e-6, "sync/check_seconds": 0.75, "sync/seconds": 0.3,
                      "eval/accuracy": 0.5}
    assert merge_checks({"sync/seconds": 0.3}, evaluation)["sync/probe_diff"] == 1e-6
