"""LearnerWorker without Ray: real FSDP2 over gloo, one rank in-process and two ranks spawned."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from learners.batching import Samples
from pipeline.config import load_config

PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 5, 6], [1, 11, 12, 13]]
RESPONSES = [[13, 14, 2], [15, 16], [17, 18, 19, 2], [20]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_worker(model_dir: str, *overrides: str, rank: int = 0, world: int = 1, port: int = 0):
    from learners.worker import LearnerWorker

    cfg = load_config(None, [f"model.path={model_dir}", "learner.num_ranks=1", "prompts_per_step=1",
                             "rollout.n_samples=4", "algorithm.kl_coef=0", *overrides])
    worker = LearnerWorker(cfg, rank, world)
    worker.setup("127.0.0.1", port)
    return worker


def samples(advantages: list[float]) -> Samples:
    adv = [np.full(len(r), a, np.float32) for r, a in zip(RESPONSES, advantages)]
    return Samples(PROMPTS, RESPONSES, {"advantages": adv})


def test_positive_advantage_raises_and_negative_lowers_logprob(model_dir, process_group):
    worker = make_worker(model_dir, "learner.lr=1e-3")
    before = [x.sum() for x in worker.score(PROMPTS, RESPONSES)]
    worker.update(samples([1.0, -1.0, 0.0, 0.0]))
    after = [x.sum() for x in worker.score(PROMPTS, RESPONSES)]
    assert after[0] > before[0]
    assert after[1] < before[1]


def test_non_finite_gradient_skips_the_step_and_is_counted(model_dir, process_group):
    worker = make_worker(model_dir, "learner.lr=1e-2")
    before = [x.copy() for x in worker.score(PROMPTS, RESPONSES)]
    metrics = worker.update(samples([float("inf"), 1.0, 1.0, 1.0]))
    assert metrics["learner/skipped_steps"] == 1.0
    assert np.isnan(metrics["actor/grad_norm"])
    after = worker.score(PROMPTS, RESPONSES)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    metrics = worker.update(samples([1.0, -1.0, 1.0, -1.0]))  # training goes on afterwards
    assert metrics["learner/skipped_steps"] == 1.0 and np.isfinite(metrics["actor/grad_norm"])


def test_micro_batch_size_does_not_change_the_update(model_dir, process_group):
    """Gradient accumulation over 1-sample micro-batches == one micro-batch holding all."""
    results = []
    for budget in (10_000, 1):
        worker = make_worker(model_dir, "learner.lr=1e-3", f"learner.micro_batch_tokens={budget}")
        worker.update(samples([1.0, -0.5, 0.25, -1.0]))
        results.append(worker.score(PROMPTS, RESPONSES))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _two_rank_update(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    worker = make_worker(model_dir, "learner.lr=1e-3", "learner.num_ranks=2", rank=rank, world=2, port=port)
    mine = samples([1.0, -0.5, 0.25, -1.0]).subset([0, 1] if rank == 0 else [2, 3])
    worker.update(mine)
    scores = worker.score(PROMPTS, RESPONSES)
    if rank == 0:
        np.save(os.path.join(out_dir, "scores.npy"), np.concatenate(scores))
    worker.shutdown()


def test_two_ranks_match_one_rank(model_dir, process_group, tmp_path):
    """The same batch split over two FSDP2 ranks gives the single-rank update."""
    single = make_worker(model_dir, "learner.lr=1e-3")
    single.update(samples([1.0, -0.5, 0.25, -1.0]))
    expected = np.concatenate(single.score(PROMPTS, RESPONSES))
    mp.start_processes(
        _two_rank_update, args=(free_port(), model_dir, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=2e-5)
