"""Reward-model trainer pieces against hand-computed numbers, and the saved model's round trip."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from learners import reward_trainer as rt


def test_bradley_terry_loss_by_hand():
    r_chosen = torch.tensor([2.0, 0.0, 1.0])
    r_rejected = torch.tensor([0.0, 0.0, 3.0])
    per_pair = rt.bradley_terry_loss(r_chosen, r_rejected)
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 2, 0, -2
    expected = [math.log1p(math.exp(-2.0)), math.log(2.0), math.log1p(math.exp(2.0))]
    assert per_pair.tolist() == pytest.approx(expected, rel=1e-6)


def test_margin_shifts_the_difference():
    r_chosen, r_rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    margin = torch.tensor([0.0, 0.0, 1.0])
    loss = rt.pair_loss(r_chosen, r_rejected, margin, center_coef=0.0)
    # d - margin = 2, 0, -3
    expected = (math.log1p(math.exp(-2.0)) + math.log(2.0) + math.log1p(math.exp(3.0))) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(1.2895541, rel=1e-6)


def test_centring_adds_mean_squared_sum():
    r_chosen, r_rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    margin = torch.tensor([0.0, 0.0, 1.0])
    plain = float(rt.pair_loss(r_chosen, r_rejected, margin, 0.0))
    centred = float(rt.pair_loss(r_chosen, r_rejected, margin, 0.1))
    # (r_c + r_r)^2 = 4, 0, 16 -> mean 20/3, times 0.1
    assert centred - plain == pytest.approx(0.1 * 20 / 3, rel=1e-6)
    assert centred == pytest.approx(1.9562208, rel=1e-6)


def test_centring_gradient_pulls_rewards_to_zero_without_changing_their_order():
    r_chosen = torch.tensor([3.0], requires_grad=True)
    r_rejected = torch.tensor([1.0], requires_grad=True)
    rt.pair_loss(r_chosen, r_rejected, None, center_coef=1.0).backward()
    # d/dr_c = -sigmoid(-2) + 2 * 4, d/dr_r = sigmoid(-2) + 2 * 4: both push down.
    sig = 1 / (1 + math.exp(2.0))
    assert float(r_chosen.grad) == pytest.approx(-sig + 8.0, rel=1e-6)
    assert float(r_rejected.grad) == pytest.approx(sig + 8.0, rel=1e-6)


def test_pairwise_accuracy_counts_ties_half():
    acc = rt.pairwise_accuracy(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert acc.tolist() == [1.0, 0.5, 0.0]


@pytest.fixture(scope="module")
def reward_model(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return rt.load_reward_model(tiny_model, torch.float32, tokenizer.pad_token_id, False), tokenizer


def test_new_head_starts_at_zero_and_pads_are_ignored(reward_model):
    model, tokenizer = reward_model
    assert model.config.architectures == ["Qwen2ForSequenceClassification"]
    assert model.config.pad_token_id == tokenizer.pad_token_id
    scores = rt.score_sequences(model, [[5, 6, 7], [5, 6]], tokenizer.pad_token_id, "cpu").detach()
    assert scores.tolist() == [0.0, 0.0]
    torch.nn.init.normal_(model.score.weight)
    padded = rt.score_sequences(model, [[5, 6, 7], [5, 6]], tokenizer.pad_token_id, "cpu").detach()
    alone = rt.score_sequences(model, [[5, 6]], tokenizer.pad_token_id, "cpu").detach()
    # The score of a sequence does not depend on how far it was padded.
    assert float(padded[1]) == pytest.approx(float(alone[0]), abs=1e-5)


def test_saved_model_loads_in_transformers_and_scores_alike(reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = reward_model
    torch.nn.init.normal_(model.score.weight)
    out = str(tmp_path / "rm")
    stats = {"mean": 0.5, "std": 2.0, "count": 4}
    rt.save_reward_model(model.state_dict(), model, tokenizer.name_or_path, out, stats)
    assert not os.path.exists(out + ".tmp")
    with open(os.path.join(out, rt.STATS_FILE)) as f:
        assert json.load(f) == stats
    loaded = AutoModelForSequenceClassification.from_pretrained(out)
    sequences = [[5, 6, 7, 8], [9, 10]]
    expected = rt.score_sequences(model, sequences, tokenizer.pad_token_id, "cpu")
    assert rt.score_sequences(loaded, sequences, tokenizer.pad_token_id, "cpu").tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_evaluate_and_stats_on_one_rank(reward_model, process_group):
    model, tokenizer = reward_model
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight)
    pad = tokenizer.pad_token_id
    pairs = [([5, 6, 7], [5, 9], 0.0, "a"), ([8, 8], [7, 6, 5], 0.5, "b"), ([11], [12, 13], 0.0, "a"), ([14], [15], 0.0, "")]
    rc, rr, margin = rt.score_pairs(model, pairs, pad, "cpu")
    # Batches of 2: the last round has one pair, as ranks with uneven shares would.
    metrics = rt.evaluate(model, pairs, pad, "cpu", rank=0, world=1, batch=2, center_coef=0.0)
    stats = rt.reward_stats(model, pairs, pad, "cpu", rank=0, world=1, batch=4)
    correct = rt.pairwise_accuracy(rc, rr)
    assert metrics["rm/eval_accuracy"] == pytest.approx(float(correct.mean()))
    # Per category: "a" is pairs 0 and 2, "b" pair 1; the uncategorised pair counts only overall.
    assert metrics["rm/eval_accuracy/a"] == pytest.approx(float(correct[[0, 2]].mean()))
    assert metrics["rm/eval_accuracy/b"] == pytest.approx(float(correct[1]))
    assert (metrics["rm/eval_pairs/a"], metrics["rm/eval_pairs/b"]) == (2, 1)
    assert not any(k.endswith("/") for k in metrics)
    assert metrics["rm/eval_margin"] == pytest.approx(float((rc - rr).mean()), abs=1e-6)
    assert metrics["rm/eval_loss"] == pytest.approx(float(rt.bradley_terry_loss(rc, rr, margin).mean()), abs=1e-6)
    rewards = torch.cat([rc, rr]).double()
    assert stats["mean"] == pytest.approx(float(rewards.mean()), abs=1e-6)
    assert stats["std"] == pytest.approx(float(rewards.std(unbiased=False)), abs=1e-6)
    assert stats["count"] == 8
