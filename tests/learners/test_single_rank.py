"""A single CPU learner rank without FSDP2 computes exactly what the FSDP2-wrapped one does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.batching import Samples
from pipeline.config import load_config

PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 5, 6], [1, 11, 12, 13]]
RESPONSES = [[13, 14, 2], [15, 16], [17, 18, 19, 2], [20]]


def make_worker(model_dir: str, fsdp: bool):
    from learners.worker import LearnerWorker

    cfg = load_config(None, [
        f"model.path={model_dir}", "learner.num_ranks=1", "prompts_per_step=1", "rollout.n_samples=4",
        "algorithm.kl_coef=0.04", "learner.lr=1e-2", "learner.micro_batch_tokens=12",
        f"learner.fsdp_single_rank={str(fsdp).lower()}",
    ])
    worker = LearnerWorker(cfg, 0, 1)
    worker.setup("127.0.0.1", 0)
    return worker


def test_plain_single_rank_matches_fsdp2(model_dir, process_group):
    from torch.distributed.fsdp import FSDPModule

    plain, sharded = make_worker(model_dir, fsdp=False), make_worker(model_dir, fsdp=True)
    assert not isinstance(plain.policy, FSDPModule) and isinstance(sharded.policy, FSDPModule)
    base = Samples(PROMPTS, RESPONSES, {})
    advantages = [np.full(len(r), a, np.float32) for r, a in zip(RESPONSES, (1.0, -0.5, 0.25, -1.0))]
    metrics = []
    for worker in (plain, sharded):
        ref = worker.compute(base, need_old_logprobs=False)["ref_logprobs"]
        batch = Samples(PROMPTS, RESPONSES, {"advantages": advantages, "ref_logprobs": ref})
        metrics.append([worker.update(batch) for _ in range(2)])
    for a, b in zip(*metrics):
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert metrics[0][1]["actor/kl_loss"] > 0  # the policy moved away from the reference
    plain_sd, sharded_sd = plain.full_state_dict(), sharded.full_state_dict()
    assert plain_sd.keys() == sharded_sd.keys()
    for key in plain_sd:
        torch.testing.assert_close(plain_sd[key], sharded_sd[key], rtol=1e-5, atol=1e-6)
    scores = [w.score(PROMPTS, RESPONSES) for w in (plain, sharded)]
    for x, y in zip(*scores):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
