"""Multi-turn loss masks in the learner: environment tokens (mask 0) take part in no loss, KL,
entropy or value term, on one rank, across micro-batches and across two FSDP2 ranks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from learners import losses
from learners.batching import Samples, collate
from tests.learners.test_learner_worker import free_port, make_worker

CPU = torch.device("cpu")
# Two groups of two conversations sharing their opening. Each response: assistant tokens
# (mask 1) with environment tokens (mask 0) between turns, and in sample 1 also at the end.
PROMPTS = [[1, 5, 6, 7]] * 2 + [[1, 9, 10]] * 2
RESPONSES = [
    [13, 14, 2, 40, 41, 42, 15, 2],
    [16, 2, 40, 43, 17, 18, 2, 40, 44],
    [19, 20, 21, 2, 40, 45, 22, 2],
    [23, 2, 40, 46, 47, 24, 25, 26, 2],
]
MASKS = [
    [1, 1, 1, 0, 0, 0, 1, 1],
    [1, 1, 0, 0, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0, 0, 1, 1],
    [1, 1, 0, 0, 0, 1, 1, 1, 1],
]
ADVANTAGES = [0.8, -0.4, 0.3, -1.0]
ALL_ON = ("algorithm.kl_coef=0.1", "algorithm.entropy_coef=0.01", "algorithm.advantage=gae")


def per_token(values: list[float], junk: float | None = None) -> list[np.ndarray]:
    """One value per token; with ``junk``, masked-out tokens hold it instead."""
    out = []
    for v, mask in zip(values, MASKS):
        row = np.full(len(mask), v, np.float32)
        if junk is not None:
            row[np.asarray(mask) == 0] = junk
        out.append(row)
    return out


def batch(junk: float | None = None, masks=MASKS, responses=RESPONSES) -> Samples:
    rng = np.random.default_rng(0)
    ref = [rng.normal(-3.0, 0.5, len(m)).astype(np.float32) for m in MASKS]
    if junk is not None:
        ref = [np.where(np.asarray(m) == 0, junk, r).astype(np.float32) for r, m in zip(ref, MASKS)]
    extras = {
        "advantages": per_token(ADVANTAGES, junk),
        "ref_logprobs": ref,
        "returns": per_token([1.0, 0.0, 0.5, -0.5], junk),
        "old_values": per_token([0.0, 0.0, 0.0, 0.0], None if junk is None else -junk),
    }
    cut = [len(r) for r in responses]
    extras = {k: [v[:n] for v, n in zip(rows, cut)] for k, rows in extras.items()}
    loss_masks = None if masks is None else [np.asarray(m[:n], np.float32) for m, n in zip(masks, cut)]
    return Samples(PROMPTS, [list(r) for r in responses], extras, loss_masks)


def test_collate_builds_the_loss_mask_beside_the_response_mask():
    mb = collate(batch(), pad_id=0, device=CPU, share=True)
    assert mb.response_mask[1].tolist() == [1.0] * 9
    assert mb.response_mask[0].tolist() == [1.0] * 8 + [0.0]
    assert mb.loss_mask[0].tolist() == MASKS[0] + [0]
    assert mb.loss_mask[1].tolist() == MASKS[1]
    plain = collate(batch(masks=None), pad_id=0, device=CPU)
    assert plain.loss_mask is plain.response_mask
    assert batch().loss_tokens() == sum(map(sum, MASKS)) and batch(masks=None).loss_tokens() == 34
    with pytest.raises(ValueError, match="loss mask has 3 entries for 8"):
        collate(Samples(PROMPTS[:1], RESPONSES[:1], {}, [np.ones(3)]), 0, CPU)


def test_first_update_metrics_are_the_hand_masked_means(model_dir, process_group):
    worker = make_worker(model_dir, "learner.lr=1e-3", *ALL_ON)
    computed = worker.compute(batch(), need_old_logprobs=True)
    metrics = worker.update(batch())
    mask = torch.tensor([m + [0] * (9 - len(m)) for m in MASKS], dtype=torch.float32)

    def padded(rows):
        return torch.tensor([list(r) + [0.0] * (9 - len(r)) for r in rows], dtype=torch.float32)

    # Ratio 1 on the first step: the PPO loss is minus the mean advantage over assistant tokens.
    adv = padded(per_token(ADVANTAGES))
    assert metrics["actor/pg_loss"] == pytest.approx(float(-(adv * mask).sum() / mask.sum()), abs=1e-6)
    kl = losses.kl_estimate(padded(computed["old_logprobs"]), padded(batch().extras["ref_logprobs"]), "k3")
    assert metrics["actor/kl_loss"] == pytest.approx(float(losses.masked_mean(kl, mask)), rel=1e-4)
    values = padded(computed["old_values"])
    vf = 0.5 * (values - padded(batch().extras["returns"])) ** 2
    assert metrics["critic/vf_loss"] == pytest.approx(float(losses.masked_mean(vf, mask)), rel=1e-4)


def test_values_on_environment_tokens_change_nothing(model_dir, process_group):
    results = []
    for junk in (None, 50.0):
        worker = make_worker(model_dir, "learner.lr=1e-3", *ALL_ON)
        metrics = worker.update(batch(junk))
        results.append((metrics, worker.score(PROMPTS, RESPONSES)))
    (m_a, s_a), (m_b, s_b) = results
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "critic/vf_loss", "actor/grad_norm", "critic/grad_norm"):
        assert m_a[key] == pytest.approx(m_b[key], rel=1e-5, abs=1e-7), key
    for a, b in zip(s_a, s_b):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_trailing_environment_tokens_equal_absent_tokens(model_dir, process_group):
    """A causal model's earlier logits ignore later tokens: masking the tail of a response is
    the same as cutting it off, for every loss term and for the weights after the step."""
    trimmed = [r[: max(i for i, m in enumerate(mask) if m) + 1] for r, mask in zip(RESPONSES, MASKS)]
    results = []
    for responses in (RESPONSES, trimmed):
        worker = make_worker(model_dir, "learner.lr=1e-3", *ALL_ON, "learner.share_prompt_forward=false")
        metrics = worker.update(batch(responses=responses))
        results.append((metrics, worker.score(PROMPTS, RESPONSES)))
    (m_a, s_a), (m_b, s_b) = results
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "critic/vf_loss", "actor/grad_norm"):
        assert m_a[key] == pytest.approx(m_b[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(s_a, s_b):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_seq_mean_counts_only_assistant_tokens(model_dir, process_group):
    worker = make_worker(model_dir, "learner.lr=1e-3", "algorithm.loss_agg=seq_mean_token_mean")
    metrics = worker.update(batch())
    # Per sequence the advantage is constant on its assistant tokens: the mean of the means.
    assert metrics["actor/pg_loss"] == pytest.approx(-float(np.mean(ADVANTAGES)), abs=1e-6)


def _two_ranks(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    worker = make_worker(model_dir, "learner.lr=1e-3", "learner.num_ranks=2", *ALL_ON,
                         "learner.micro_batch_tokens=16", rank=rank, world=2, port=port)
    mine = batch().subset([0, 1, 2] if rank == 0 else [3])
    metrics = worker.update(mine)
    scores = worker.score(PROMPTS, RESPONSES)
    if rank == 0:
        np.save(os.path.join(out_dir, "scores.npy"), np.concatenate(scores))
        np.save(os.path.join(out_dir, "pg_loss.npy"), np.array([metrics["actor/pg_loss"]]))
    worker.shutdown()


def test_micro_batches_and_two_ranks_match_one_pass(model_dir, process_group, tmp_path):
    """Token-normalised over assistant tokens only: 1-sample micro-batches, and an uneven split
    over two FSDP2 ranks, give the single-pass update."""
    results = []
    for budget in (10_000, 1):
        worker = make_worker(model_dir, "learner.lr=1e-3", *ALL_ON, f"learner.micro_batch_tokens={budget}")
        metrics = worker.update(batch())
        results.append((metrics["actor/pg_loss"], np.concatenate(worker.score(PROMPTS, RESPONSES))))
    (loss_one, expected), (loss_micro, micro) = results
    assert loss_micro == pytest.approx(loss_one, abs=1e-6)
    np.testing.assert_allclose(micro, expected, atol=2e-5)
    mp.start_processes(_two_ranks, args=(free_port(), model_dir, str(tmp_path)), nprocs=2, start_method="spawn")
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=2e-5)
    assert float(np.load(tmp_path / "pg_loss.npy")[0]) == pytest.approx(loss_one, abs=1e-6)
