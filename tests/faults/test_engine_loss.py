"""A rollout engine killed (SIGKILL of its actor process) mid-generation, mid-weight-load or
idle is replaced in its placement bundle; the batch is the one an unkilled engine produces."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from pipeline.controller.sync import verify
from pipeline.infra import fault_injection
from pipeline.stages.train import Trainer

pytestmark = pytest.mark.integration


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def test_lost_engines_are_replaced_and_batches_unchanged(tiny_model, ray_session, tmp_path, tiny_config, fault_dir):
    cfg = tiny_config(
        tiny_model, str(tmp_path), "rollout.num_workers=2", "learner.num_ranks=1", "total_steps=3",
        "resources.max_engine_restarts=2", "reward.function=tests.integration.reward_fns:digit_fraction",
    )
    trainer = Trainer(cfg)
    trainer.setup()
    rollouts = trainer.rollouts
    try:
        prompts, sampling = [trainer.train_ids[i] for i in range(4)], trainer._sampling()
        start = time.perf_counter()
        reference = rollouts.generate(prompts, sampling, step=7, probe=trainer.probe)
        unbroken_s = time.perf_counter() - start
        engine_0 = rollouts.workers[0]

        # Mid-generation: engine 1 dies after sampling its half, before returning it.
        fault_injection.arm(fault_dir, "rollout.generate", engine=1, step=7)
        start = time.perf_counter()
        batch = rollouts.generate(prompts, sampling, step=7, probe=trainer.probe)
        print(f"\nengine lost mid-generation: generate {time.perf_counter() - start:.1f} s "
              f"(unbroken {unbroken_s:.1f} s); replacement {rollouts.fault_metrics()['faults/engine_recovery_seconds']:.1f} s")
        assert fault_injection.fired(fault_dir, "rollout.generate")
        assert rollouts.fault_metrics()["faults/engine_restarts"] == 1
        assert rollouts.workers[0] is engine_0  # only the lost shard ran again
        assert batch.response_ids == reference.response_ids  # same seeds, same tokens
        assert batch.prompt_index == reference.prompt_index
        flat = [x for row in batch.response_logprobs for x in row]
        assert flat == pytest.approx([x for row in reference.response_logprobs for x in row], abs=1e-5)
        assert len(batch.probe_scores) == 2  # the replacement scored the probe too

        # Mid-weight-load: engine 0 dies while loading the step's new weights; the step completes,
        # its replacement loaded the same weights and passed the probe check against the learner.
        fault_injection.arm(fault_dir, "rollout.load_weights", engine=0)
        before = rollouts.fault_metrics()["faults/engine_recovery_seconds"]
        metrics = trainer.step()
        print(f"engine lost mid-weight-load: sync {metrics['time/sync']:.1f} s; replacement "
              f"{rollouts.fault_metrics()['faults/engine_recovery_seconds'] - before:.1f} s")
        assert fault_injection.fired(fault_dir, "rollout.load_weights")
        assert rollouts.fault_metrics()["faults/engine_restarts"] == 2
        assert trainer.step_index == 1 and ray.get(rollouts.workers[0].version.remote()) == trainer.version
        assert verify(trainer.learners, rollouts, trainer.probe, cfg.rollout.probe_tolerance, 1) <= 1e-3

        # Idle: engine 1's process is killed between steps and found at its next call. It is the
        # third loss, beyond resources.max_engine_restarts=2: a clear error, no hang.
        os.kill(_pid(rollouts.workers[1]), signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"rollout engine 1 was lost .*resources.max_engine_restarts=2"):
            trainer.step()
    finally:
        trainer.shutdown()


def test_a_setup_that_fails_part_way_gives_its_resources_back(tiny_model, ray_session, tmp_path, tiny_config, monkeypatch):
    from ray.util import placement_group_table

    from rollout_workers import group

    def live_groups() -> set[str]:
        return {pg_id for pg_id, pg in placement_group_table().items() if pg["state"] != "REMOVED"}

    def engines_fail(self, *args, **kwargs):
        raise RuntimeError("engines could not start")

    before, free_before = live_groups(), ray.available_resources().get("CPU", 0.0)
    # The placement group is reserved and the learner ranks are up when the engines fail.
    monkeypatch.setattr(group.RolloutGroup, "__init__", engines_fail)
    trainer = Trainer(tiny_config(tiny_model, str(tmp_path / "run")))
    with pytest.raises(RuntimeError, match="engines could not start"):
        trainer.setup()
    assert live_groups() <= before
    deadline = time.monotonic() + 30  # the raylet reports freed resources a moment later
    while ray.available_resources().get("CPU", 0.0) < free_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0.0) >= free_before, (
        f"waited 30 s for {free_before:g} free CPUs (as before setup) after the failed setup; "
        f"free now: {ray.available_resources().get('CPU', 0.0):g}")
