"""The real CLI as a subprocess, and the transformers engine against vLLM on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(900)  # the run itself may take its subprocess timeout, 600 s
def test_cli_train_smoke(tiny_model, tmp_path, tiny_config):
    from pipeline.config import save_config

    cfg = tiny_config(tiny_model, str(tmp_path), "total_steps=2", "checkpoint.every_steps=1")
    config_file = save_config(cfg, str(tmp_path / "tiny.yaml"))
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "train", config_file, "learner.lr=2e-3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval accuracy after RL" in proc.stdout
    with open(tmp_path / "logs" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [0, 1, 2]
    assert os.path.realpath(tmp_path / "checkpoints" / "latest").endswith("step_000002")
    assert os.path.isfile(tmp_path / "policy" / "model.safetensors")


# The CLI in a fresh process whose ray.init exits 3: nothing can start Ray unnoticed, since every
# way in (init_ray, a direct ray.init, Ray's auto-init on first use) goes through ray.init.
CLI_WITHOUT_RAY = (
    "import os, sys, ray\n"
    "def refuse(*args, **kwargs):\n"
    "    print('ray.init was called', file=sys.stderr)\n"
    "    os._exit(3)\n"
    "ray.init = refuse\n"
    "from pipeline.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_cli_rejects_bad_config_before_starting_ray(tiny_model, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_RAY, "train", "configs/debug.yaml", "learner.lrr=1e-5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "learner.lr" in proc.stderr and "did you mean" in proc.stderr
    assert "ray.init was called" not in proc.stderr


def test_hf_engine_runs_the_pipeline(tiny_model, ray_session, tmp_path, tiny_config):
    from pipeline.stages.train import Trainer

    cfg = tiny_config(tiny_model, str(tmp_path), "rollout.engine=hf", "total_steps=1")
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        metrics = trainer.step()
    finally:
        trainer.shutdown()
    assert metrics["sync/probe_diff"] <= cfg.rollout.probe_tolerance
    assert np.isfinite(metrics["actor/pg_loss"])


def test_vllm_reload_matches_transformers_after_weight_change(tiny_model, ray_session):
    """Perturbed weights pushed into a running engine score like transformers on the same weights.

    Regression guard for tied embeddings: the LM head must follow the reloaded embedding.
    """
    import ray
    from transformers import AutoModelForCausalLM

    from rollout_workers.group import RolloutWorker
    from rollout_workers.types import ProbeBatch, Sampling

    state = load_file(os.path.join(tiny_model, "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.load_state_dict(perturbed, strict=False)
    prompts, responses = [[1, 5, 6, 7], [1, 9]], [[8, 9, 10], [11, 12]]
    expected = []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1].float()
            expected.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0].numpy())
    for engine_name in ("vllm", "hf"):
        engine = ray.remote(RolloutWorker).options(
            num_cpus=1, runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
        ).remote(engine_name, tiny_model, seed=0, max_model_len=64, kv_cache_gib=1)
        try:
            before = ray.get(engine.score.remote(prompts, responses))
            ray.get(engine.load_weights.remote(perturbed, 1))
            after = ray.get(engine.score.remote(prompts, responses))
            # The pipeline's path: the probe is scored inside a generate call.
            batch = ray.get(engine.generate.remote(
                [[1, 4]], Sampling(n=2, max_tokens=3), 0, 0, 0, ProbeBatch(prompts, responses)
            ))
        finally:
            ray.kill(engine)
        assert not np.allclose(np.concatenate(before), np.concatenate(expected), atol=1e-3)
        for got, want in zip(after, expected):
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=engine_name)
        assert len(batch.response_ids) == 2 and len(batch.probe_scores) == 1
        for got, want in zip(batch.probe_scores[0], expected):
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{engine_name} in generate")


def test_two_rollout_workers_split_a_batch_like_one(tiny_model, ray_session, tmp_path, tiny_config):
    """Seeds depend on the prompt, not the engine: splitting among engines changes nothing."""
    from rollout_workers.group import RolloutGroup
    from rollout_workers.types import ProbeBatch, Sampling

    prompts = [[1, 5, 6, 7], [1, 9], [1, 10, 11], [1, 12], [1, 13, 14]]
    sampling = Sampling(n=3, temperature=1.0, max_tokens=5)
    probe = ProbeBatch([[1, 5], [1, 9, 9]], [[6, 7], [8]])
    batches = []
    for workers in (2, 1):
        cfg = tiny_config(tiny_model, str(tmp_path), f"rollout.num_workers={workers}")
        group = RolloutGroup(cfg, tiny_model)
        try:
            batches.append(group.generate(prompts, sampling, step=7, probe=probe))
            if workers == 2:
                # More engines than prompts: the idle engine still scores the probe.
                lone = group.generate(prompts[:1], sampling, step=7, probe=probe)
        finally:
            group.shutdown()
    split, single = batches
    # Every engine scored the probe, all with the same (initial) weights.
    assert len(split.probe_scores) == len(lone.probe_scores) == 2 and len(single.probe_scores) == 1
    for scores in split.probe_scores + lone.probe_scores:
        for got, want in zip(scores, single.probe_scores[0]):
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(lone.response_ids) == 3
    assert split.prompt_index == single.prompt_index == [i for i in range(5) for _ in range(3)]
    assert split.response_ids == single.response_ids
    np.testing.assert_allclose(
        np.concatenate([np.asarray(x) for x in split.response_logprobs]),
        np.concatenate([np.asarray(x) for x in single.response_logprobs]),
        atol=1e-5,
    )


def test_local_ray_dashboard_binds_loopback(ray_session):
    url = ray_session._private.worker.global_worker.node.address_info.get("webui_url")
    assert url and url.split(":")[0] == "127.0.0.1"
