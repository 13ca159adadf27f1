"""Reward sources without Ray: the weighted sum, per-source metrics, similarity values against the
libraries' own documented examples, config errors per kind, and the in-process failure paths."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.rewards import RewardSet, ScoreRequest, weighted_sum
from pipeline.rewards.base import LocalSource, ResultBuilder, SourceResult
from pipeline.rewards.similarity import SentenceScorer, corpus_similarity

MODULE = "rayppo_source_fixture_mod"


@pytest.fixture
def source_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent("""
        import math, time

        def length(prompt, completion, answer):
            return float(len(completion))

        def chat_rule(prompt, completion, answer, messages, metadata, references):
            return float(len(messages)) + metadata.get("bonus", 0.0) + len(references)

        def flaky(prompt, completion, answer):
            if completion == "raise":
                raise RuntimeError("boom")
            if completion == "nan":
                return math.nan
            return 1.0

        import threading
        RELEASE = threading.Event()  # set by the test when it is done: until then "stuck" never returns

        def slow(prompt, completion, answer):
            if completion != "quick":
                RELEASE.wait(120)
            return 1.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return MODULE


def rewards_for(*sources, task="arithmetic") -> RewardSet:
    overrides = [f"reward.sources={list(sources)!r}"]
    if task is None:
        overrides += ["data.task=null", "data.train_files=[x.jsonl]", "data.eval_files=[y.jsonl]"]
    return RewardSet.from_config(load_config(None, overrides))


def request(completions, references=None, metadata=None, answers=None) -> ScoreRequest:
    n = len(completions)
    return ScoreRequest(
        messages=[[{"role": "user", "content": f"Compute {i}+1."}] for i in range(n)],
        completions=list(completions),
        references=references or [],
        answers=answers or [],
        metadata=metadata or [],
    )


# ----------------------------------------------------------------------------- weighted sum


def test_weighted_sum_skips_zero_weights_and_propagates_nan():
    a = np.array([1.0, 2.0, np.nan, 4.0])
    b = np.array([0.5, np.nan, 1.0, 1.0])
    monitor = np.array([np.nan, np.nan, np.nan, 7.0])  # weight 0: never makes a sample unscorable
    total = weighted_sum([2.0, -1.0, 0.0], [a, b, monitor])
    np.testing.assert_array_equal(total, [1.5, np.nan, np.nan, 7.0])


def test_reward_set_total_and_per_source_metrics(source_module):
    rs = rewards_for(
        {"kind": "rule", "name": "len", "function": f"{source_module}:length", "weight": 0.5},
        {"kind": "rule", "name": "ok", "function": f"{source_module}:flaky", "weight": 2.0},
        {"kind": "similarity", "metric": "chrf", "weight": 0},
    )
    scores, metrics = rs.score(request(["ab", "raise", "nan", "abcd"], references=[["ab"], [], ["x"], []]))
    np.testing.assert_array_equal(scores, [0.5 * 2 + 2.0, np.nan, np.nan, 0.5 * 4 + 2.0])
    assert metrics["reward/mean"] == pytest.approx(3.5) and metrics["reward/std"] == pytest.approx(0.5)
    assert metrics["reward/unscorable"] == 2
    assert metrics["reward/len/mean"] == pytest.approx((2 + 5 + 3 + 4) / 4)
    assert metrics["reward/ok/unscorable"] == 2
    assert metrics["reward/ok/raised"] == 1 and metrics["reward/ok/not_finite"] == 1
    # The monitor-only similarity source could not score two samples without references, and
    # that did not make them unscorable in the total.
    assert metrics["reward/chrf/unscorable"] == 2 and metrics["reward/chrf/no_reference"] == 2
    assert metrics["reward/chrf/mean"] == pytest.approx(0.5 * (1.0 + 0.0))
    for name in ("len", "ok", "chrf"):
        assert metrics[f"reward/{name}/seconds"] >= 0


def test_function_shorthand_is_one_rule_source():
    rs = RewardSet.from_config(load_config(None))
    assert rs.names == ["rule"]
    scores, metrics = rs.score(request(["1", "7"], answers=["1", "2"]))
    assert scores.tolist() == [1.0, 0.0] and metrics["reward/rule/mean"] == 0.5


def test_rule_functions_get_the_conversation_when_they_ask(source_module):
    rs = rewards_for({"kind": "rule", "function": f"{source_module}:chat_rule"})
    scores, _ = rs.score(request(["a", "b"], references=[["r1", "r2"], []], metadata=[{"bonus": 10.0}, {}]))
    assert scores.tolist() == [1 + 10 + 2, 1 + 0 + 0]


def test_rule_timeout_gives_up_and_later_batches_still_run(source_module):
    import importlib

    release = importlib.import_module(source_module).RELEASE
    rs = rewards_for(
        {"kind": "rule", "name": "slow", "function": f"{source_module}:slow", "timeout_s": 0.3},
        {"kind": "rule", "name": "len", "function": f"{source_module}:length"},
    )
    try:
        # The function never returns on its own: only the deadline can end this call.
        scores, metrics = rs.score(request(["stuck", "stuck"]))
        assert np.isnan(scores).all() and metrics["reward/slow/timeout"] == 2
        assert metrics["reward/len/mean"] == 5.0
        # The next batch does not queue behind the stuck one (still blocked): it runs and scores.
        scores, metrics = rs.score(request(["quick"]))
        assert scores.tolist() == [1.0 + 5.0] and metrics.get("reward/slow/timeout", 0) == 0
    finally:
        release.set()
        rs.shutdown()


def test_a_source_that_breaks_scores_nothing_instead_of_crashing():
    class Broken(LocalSource):
        kind = "rule"

        def score_batch(self, request):
            raise KeyError("oops")

    rs = RewardSet([Broken("broken", 1.0)])
    scores, metrics = rs.score(request(["a", "b", "c"]))
    assert np.isnan(scores).all() and metrics["reward/broken/raised"] == 3


def test_score_request_checks_lengths_and_fills_defaults():
    r = request(["a", "b"])
    assert r.references == [[], []] and r.answers == [None, None] and r.metadata == [{}, {}]
    assert r.prompts == ["Compute 0+1.", "Compute 1+1."]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        ScoreRequest([[], []], ["a", "b"], answers=["x"])
    assert r.subset([1]).completions == ["b"]


def test_result_builder_counts_reasons():
    b = ResultBuilder(3)
    b.set(0, 1.0)
    b.fail(1, "timeout", "took too long")
    b.fail(2, "timeout", "took too long")
    out = b.result(0.5)
    assert out.reasons == {"timeout": 2} and out.unscorable_count == 2 and out.first_problem == "sample 1 took too long"
    assert SourceResult.unscorable(4, "request_failed", "down").reasons == {"request_failed": 4}


# ------------------------------------------------------------------------------- similarity

# sacrebleu's README example (corpus level): BLEU = 48.53, chrF2 = 59.73.
SACREBLEU_REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
SACREBLEU_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


def test_corpus_bleu_and_chrf_match_sacrebleu_readme():
    per_sample_refs = [list(refs) for refs in zip(*SACREBLEU_REFS)]
    out = corpus_similarity(SACREBLEU_SYS, per_sample_refs)
    assert round(out["bleu"], 2) == 48.53
    assert round(out["chrf"], 2) == 59.73
    assert out["samples_with_references"] == 3


def test_sentence_scores_against_the_libraries():
    from sacrebleu.metrics import BLEU, CHRF

    hyp, refs = SACREBLEU_SYS[2], [SACREBLEU_REFS[0][2], SACREBLEU_REFS[1][2]]
    assert SentenceScorer("bleu")(hyp, refs) == pytest.approx(BLEU(effective_order=True).sentence_score(hyp, refs).score / 100)
    assert SentenceScorer("chrf")(hyp, refs) == pytest.approx(CHRF().sentence_score(hyp, refs).score / 100)
    assert SentenceScorer("bleu")("The dog bit the man.", ["The dog bit the man."]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "metric,measure,target,prediction,expected",
    [  # rouge-score's own tests (rouge_scorer_test.py)
        ("rouge1", "precision", "testing one two", "testing", 1.0),
        ("rouge1", "recall", "testing one two", "testing", 1 / 3),
        ("rouge1", "fmeasure", "testing one two", "testing", 1 / 2),
        ("rouge2", "fmeasure", "testing one two", "testing one", 2 / 3),
        ("rougeL", "fmeasure", "testing one two", "testing one", 4 / 5),
        ("rougeL", "recall", "testing one two", "testing two", 2 / 3),
        ("rouge1", "fmeasure", "testing one two", "", 0.0),
    ],
)
def test_rouge_matches_rouge_score_tests(metric, measure, target, prediction, expected):
    assert SentenceScorer(metric, measure)(prediction, [target]) == pytest.approx(expected)


def test_rouge_multi_reference_takes_the_best_fmeasure():
    # rouge-score's testRougeAllMulti: targets "first text", "first something", prediction "text first".
    refs = ["first text", "first something"]
    assert SentenceScorer("rouge1")("text first", refs) == pytest.approx(1.0)
    assert SentenceScorer("rouge2")("text first", refs) == pytest.approx(0.0)
    assert SentenceScorer("rougeL")("text first", refs) == pytest.approx(0.5)


def test_similarity_source_without_reference_is_unscorable():
    rs = rewards_for({"kind": "similarity", "metric": "rougeL"})
    scores, metrics = rs.score(request(["testing one", "x"], references=[["testing one two"], []]))
    assert scores[0] == pytest.approx(0.8) and math.isnan(scores[1])
    assert metrics["reward/rougeL/no_reference"] == 1


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"kind": "modle", "path": "x"}, r"reward\.sources\[0\]\.kind: must be one of .* \(did you mean 'model'\?\)"),
        ({"kind": "judge", "name": "j", "path": "m", "timout_s": 3}, r"reward\.sources\[0\] \(source 'j'\): unknown key 'timout_s' \(did you mean 'timeout_s'\?\)"),
        ({"kind": "judge", "name": "j", "path": "m", "timeout_s": -1}, r"reward\.sources\[0\]\.timeout_s \(source 'j'\): must be > 0, got -1\.0"),
        ({"kind": "judge", "name": "j", "path": "m", "mode": "ranked"}, r"reward\.sources\[0\]\.mode \(source 'j'\): must be one of pointwise, pairwise"),
        ({"kind": "judge", "path": "m", "score_min": 5, "score_max": 1}, r"score_min \(source 'judge'\): must be < score_max"),
        ({"kind": "model"}, r"reward\.sources\[0\]\.path \(source 'model'\): a model source needs the model's path"),
        ({"kind": "model", "path": "m", "num_actors": 0}, r"num_actors \(source 'model'\): must be >= 1"),
        ({"kind": "model", "path": "m", "gpus": -0.5}, r"gpus \(source 'model'\): must be >= 0"),
        ({"kind": "model", "path": "m", "batch_size": "big"}, r"batch_size \(source 'model'\): expected int, got 'big'"),
        ({"kind": "http", "url": "localhost:8000"}, r"url \(source 'http'\): must be an http:// or https:// URL"),
        ({"kind": "http", "url": "http://h", "max_retries": -1}, r"max_retries \(source 'http'\): must be >= 0"),
        ({"kind": "http", "url": "http://h", "token_env": "A", "token_file": "b"}, r"token_file \(source 'http'\): set token_env or token_file, not both"),
        ({"kind": "similarity", "metric": "meteor"}, r"metric \(source 'meteor'\): must be one of bleu, chrf, rouge1, rouge2, rougeL"),
        ({"kind": "rule", "function": "nocolon"}, r"function \(source 'rule'\): must be 'builtin' or 'package\.module:function'"),
        ({"kind": "rule", "name": "a b"}, r"name \(source 'a b'\): must be letters, digits"),
        ({"kind": "rule", "weight": 0}, r"every source has weight 0"),
        ({"kind": "model", "path": "m", "node_labels": {"pool": "rm"}}, r"node_labels \(source 'model'\): selects a node pool"),
        ("rule", r"reward\.sources: expected list of mapping"),
    ],
)
def test_config_errors_name_the_entry_and_source(entry, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [f"reward.sources=[{entry!r}]"])


def test_duplicate_names_and_function_with_sources_are_rejected():
    with pytest.raises(ValueError, match=r"reward\.sources\[1\]\.name \(source 'bleu'\): reward\.sources\[0\] has the same name"):
        load_config(None, ["reward.sources=[{kind: similarity}, {kind: similarity}]"])
    with pytest.raises(ValueError, match=r"reward\.function='m:f' and reward\.sources are both set"):
        load_config(None, ["reward.function=m:f", "reward.sources=[{kind: similarity}]"])
    with pytest.raises(ValueError, match=r"reward\.server\.port: must be within 1\.\.65535"):
        load_config(None, ["reward.server.port=0"])


def test_checks_that_need_files_run_before_anything_starts(tmp_path, tiny_model):
    cfg = load_config(None, [f"reward.sources=[{{kind: model, path: {tmp_path / 'missing'}}}]"])
    with pytest.raises(ValueError, match=r"reward\.sources\[0\]\.path \(source 'model'\): model path .* does not exist"):
        RewardSet.from_config(cfg)
    cfg = load_config(None, [f"reward.sources=[{{kind: model, path: {tiny_model}, normalize: true}}]"])
    with pytest.raises(ValueError, match=r"normalize \(source 'model'\): true, but .* has no reward_stats\.json"):
        RewardSet.from_config(cfg)
    (tmp_path / "t.txt").write_text("no placeholder here")
    cfg = load_config(None, [f"reward.sources=[{{kind: judge, path: {tiny_model}, template: {tmp_path / 't.txt'}}}]"])
    with pytest.raises(ValueError, match=r"template \(source 'judge'\): .*t\.txt lacks \{completion\}"):
        RewardSet.from_config(cfg)
    cfg = load_config(None, [f"reward.sources=[{{kind: judge, path: {tiny_model}, template: nope}}]"])
    with pytest.raises(ValueError, match=r"'nope' is neither a built-in template \(pairwise, pointwise, pointwise_digit\) nor a file"):
        RewardSet.from_config(cfg)
    cfg = load_config(None, ["reward.sources=[{kind: http, url: 'http://127.0.0.1:9', token_env: RAYPPO_NO_SUCH_VAR}]"])
    with pytest.raises(ValueError, match=r"reward\.sources\[0\]\.token_env \(source 'http'\): environment variable 'RAYPPO_NO_SUCH_VAR' is not set"):
        RewardSet.from_config(cfg)
    cfg = load_config(None, ["reward.sources=[{kind: rule, function: 'no_such_mod_xyz:f'}]"])
    with pytest.raises(ValueError, match=r"reward\.sources\[0\]\.function='no_such_mod_xyz:f': cannot import module"):
        RewardSet.from_config(cfg)
