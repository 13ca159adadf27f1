"""Pieces of the recipe's closing report: generation, teacher-forced logprobs, the bootstrap and
the RM-vs-gold table read from a run's metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.stages import chat_report


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_batched_generation_matches_one_by_one_and_stops_at_eos(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer.encode("Compute 1+2.", add_special_tokens=False), tokenizer.encode("Compute 30+4.", add_special_tokens=False)]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    together = chat_report.generate(model, prompts, 1, 0.0, 6, eos, pad, seed=0)
    alone = [chat_report.generate(model, [p], 1, 0.0, 6, eos, pad, seed=0)[0] for p in prompts]
    assert together == alone
    for reply in together:
        assert len(reply) <= 6 and (eos not in reply or reply.index(eos) == len(reply) - 1)
    sampled = chat_report.generate(model, prompts, 3, 1.0, 6, eos, pad, seed=1)
    assert len(sampled) == 6 and sampled == chat_report.generate(model, prompts, 3, 1.0, 6, eos, pad, seed=1)


def test_sequence_logprobs_are_teacher_forced_sums(model_and_tokenizer):
    from learners.losses import logprobs_from_logits

    model, tokenizer = model_and_tokenizer
    prompts, replies = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13]]
    got = chat_report.sequence_logprobs(model, prompts, replies, tokenizer.pad_token_id)
    for p, r, value in zip(prompts, replies, got):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = logprobs_from_logits(model(ids).logits[:, :-1], ids[:, 1:])[0]
        assert value == pytest.approx(float(lp[len(p) - 1 :].sum()), abs=1e-4)


def test_bootstrap_interval_covers_the_mean():
    values = np.random.default_rng(0).normal(0.3, 0.1, size=400)
    low, high = chat_report.bootstrap_interval(values, seed=0)
    assert low < values.mean() < high
    # The standard error of 400 draws with std 0.1 is 0.005: the interval is about +-0.01.
    assert 0.015 < high - low < 0.025


def test_gap_over_steps_reads_source_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 0, "eval/accuracy": 0.6, "eval/reward/rm/mean": 0.1},
        {"step": 1, "reward/rm/mean": 0.2, "reward/gold/mean": 0.55, "kl/mean": 0.001, "response/length_mean": 12.0},
        {"step": 2, "time/update": 1.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    gap = chat_report.gap_over_steps(str(path), "rm", "gold")
    assert [r["step"] for r in gap] == [0, 1]
    assert gap[0]["eval_gold"] == 0.6 and gap[1]["rm"] == 0.2 and gap[1]["gold"] == 0.55
    assert chat_report.gap_over_steps(str(tmp_path / "none.jsonl"), "rm", "gold") == []


def test_source_names_come_from_the_config():
    from pipeline.config import load_config

    cfg = load_config("configs/chat_rlhf.yaml")
    assert chat_report._source_names(cfg) == ("rm", "gold", "runs/chat_rlhf/rm")


def test_sample_pair_agreement_counts_pairs_gold_separates():
    # Two prompts, three samples each. Prompt 1: RM agrees on (0,1) and (0,2), disagrees on
    # (1,2); prompt 2: (0,1) is too close in gold to count, the RM ties (0,2) (half) and
    # agrees on (1,2).
    gold = np.array([0.9, 0.5, 0.1, 0.50, 0.52, 0.9])
    rm = np.array([2.0, 1.0, 1.5, 0.3, 0.0, 0.3])
    result = chat_report.sample_pair_agreement(gold, rm, per_prompt=3)
    assert result["pairs"] == 5 and result["accuracy"] == pytest.approx(3.5 / 5)
    assert chat_report.sample_pair_agreement(np.array([0.5, 0.5]), np.array([1.0, 0.0]), 2)["pairs"] == 0
