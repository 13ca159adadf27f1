"""The prompt-once forward (``learner.share_prompt_forward``) against the plain layout: same
logprobs, same gradients, and the same FSDP2 collectives on two ranks with uneven work."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.multiprocessing as mp

from learners.batching import Samples, collate
from tests.learners.test_learner_worker import free_port, make_worker

# Groups of repeated prompts (one prompt a prefix of another, a one-token prompt), responses
# of different lengths, one of them a single token and one empty.
PROMPTS = [[1, 5, 6, 7, 8]] * 3 + [[1, 5, 6]] * 3 + [[9]] * 2 + [[1, 11, 12, 13]]
RESPONSES = [[13, 14, 2], [15, 16], [17], [18, 19, 20, 21, 2], [22], [23, 24], [25, 26, 27], [], [28, 29]]
ADVANTAGES = [1.0, -0.5, 0.25, -1.0, 0.75, 0.0, -0.25, 0.5, 1.0]


def batch() -> Samples:
    rng = np.random.default_rng(0)
    extras = {
        "advantages": [np.full(len(r), a, np.float32) for r, a in zip(RESPONSES, ADVANTAGES)],
        "ref_logprobs": [rng.normal(-3.0, 0.5, len(r)).astype(np.float32) for r in RESPONSES],
    }
    return Samples(PROMPTS, RESPONSES, extras)


def test_layout_runs_each_prompt_once_and_keeps_positions():
    mb = collate(batch(), pad_id=0, device=torch.device("cpu"), share=True)
    s = mb.shared
    assert s.prompt_ids.shape == (4, 5) and s.owner.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3]
    assert s.prompt_last.tolist() == [4, 2, 0, 3]
    # Sample 3 (prompt of 3 tokens): response inputs sit at positions 3, 4, 5, ...
    assert s.position_ids[3, :3].tolist() == [3, 4, 5]
    assert s.attention_mask[3].tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert s.response_inputs[3].tolist() == [18, 19, 20, 21]
    assert s.attention_mask[7, 5:].tolist() == [0, 0, 0, 0]  # the empty response
    assert collate(batch(), 0, torch.device("cpu")).shared is None


def test_logprobs_and_update_match_the_plain_layout(model_dir, process_group):
    results = {}
    for share in ("true", "false"):
        worker = make_worker(model_dir, "learner.lr=1e-3", "algorithm.kl_coef=0.1",
                             f"learner.share_prompt_forward={share}", "learner.micro_batch_tokens=24")
        computed = worker.compute(batch(), need_old_logprobs=True)
        metrics = worker.update(batch())
        results[share] = (computed, metrics, worker.score(PROMPTS, RESPONSES))
    (c_on, m_on, s_on), (c_off, m_off, s_off) = results["true"], results["false"]
    for key in ("old_logprobs", "ref_logprobs"):
        assert [len(x) for x in c_on[key]] == [len(r) for r in RESPONSES]
        for a, b in zip(c_on[key], c_off[key]):
            np.testing.assert_allclose(a, b, atol=2e-5)
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm"):
        assert np.isclose(m_on[key], m_off[key], rtol=1e-4, atol=1e-6), key
    for a, b in zip(s_on, s_off):  # the weights after the step agree
        np.testing.assert_allclose(a, b, atol=2e-5)


def _two_ranks(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    worker = make_worker(model_dir, "learner.lr=1e-3", "learner.num_ranks=2", "algorithm.kl_coef=0.1",
                         "learner.micro_batch_tokens=24", rank=rank, world=2, port=port)
    # Rank 0 gets 6 samples (several micro-batches), rank 1 three: rank 1 runs zero-weight
    # repeats, and both must make the same number of (two-pass) model calls.
    mine = batch().subset(list(range(6)) if rank == 0 else [6, 7, 8])
    worker.compute(mine, need_old_logprobs=True)
    worker.update(mine)
    scores = worker.score(PROMPTS, RESPONSES)
    if rank == 0:
        np.save(os.path.join(out_dir, "scores.npy"), np.concatenate(scores))
    worker.shutdown()


def test_two_ranks_with_uneven_micro_batches_match_one_rank(model_dir, process_group, tmp_path):
    single = make_worker(model_dir, "learner.lr=1e-3", "algorithm.kl_coef=0.1", "learner.micro_batch_tokens=24")
    single.update(batch())
    expected = np.concatenate(single.score(PROMPTS, RESPONSES))
    mp.start_processes(_two_ranks, args=(free_port(), model_dir, str(tmp_path)), nprocs=2, start_method="spawn")
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=2e-5)
