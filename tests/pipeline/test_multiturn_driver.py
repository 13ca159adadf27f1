"""The driver's multi-turn pieces without Ray: checks before heavy work, the reward phase's
scores and metrics, the final-reply request for reward sources, and the recipe's table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.controller.episodes import MultiTurn, conversation_metrics
from pipeline.stages.multiturn_report import evaluations, table
from rollout_workers.types import RolloutBatch
from tests.rollout_workers.test_multiturn_loop import rows

ENVS = "tests.rollout_workers.dialogue_envs"


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _cfg(tiny_model, *overrides):
    return load_config(None, [f"model.path={tiny_model}", f"env.class={ENVS}:CountingEnv", *overrides])


def test_bad_environment_template_or_opening_fails_before_heavy_work(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="env.class=.*NoSuchEnv"):
        MultiTurn(_cfg(tiny_model, f"env.class={ENVS}:NoSuchEnv"), tokenizer, rows(1))
    with pytest.raises(ValueError, match="data.max_prompt_tokens=4"):
        MultiTurn(_cfg(tiny_model, "data.max_prompt_tokens=4"), tokenizer, rows(1))
    with pytest.raises(ValueError, match="reward.function='a.b:c' does not apply with env.class"):
        _cfg(tiny_model, "reward.function=a.b:c")
    assert MultiTurn(_cfg(tiny_model), tokenizer, rows(1)).limits.max_turns == 8


def _batch() -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=[[1]] * 3, response_ids=[[5, 6, 7, 8], [5, 6], [9]], response_logprobs=[[0.0] * 4, [0.0] * 2, [0.0]],
        finish_reasons=["stop", "length", "stop"], prompt_index=[0, 0, 1],
        loss_masks=[[1, 0, 0, 1], [1, 1], [1]], turn_ends=[[0, 3], [1], [0]],
        turn_rewards=[[0.1, 1.0], [0.1], [0.0]], conversation_rewards=[0.5, 0.0, math.nan],
        conversations=[
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "e"}],
            [{"role": "user", "content": "x"}],
        ],
        env_infos=[
            {"turns": 2, "truncated": False, "unscorable": False, "error": None, "assistant_tokens": 2, "success": 1.0},
            {"turns": 1, "truncated": True, "unscorable": False, "error": None, "assistant_tokens": 2},
            {"turns": 1, "truncated": False, "unscorable": True, "error": "boom", "assistant_tokens": 1, "success": 0.0},
        ],
    )


def test_reward_phase_scores_and_metrics(tiny_model, tokenizer):
    mt = MultiTurn(_cfg(tiny_model), tokenizer, rows(1))
    scores, m = mt.collect(_batch())
    assert scores[:2].tolist() == [0.5, 0.0] and math.isnan(scores[2])
    # Returns: 0.1 + 1.0 + 0.5 and 0.1; the unscorable conversation is left out and counted.
    assert m["reward/mean"] == pytest.approx((1.6 + 0.1) / 2) and m["reward/unscorable"] == 1.0
    assert m["reward/turn_mean"] == pytest.approx((0.1 + 1.0 + 0.1) / 3)
    assert m["env/turns_mean"] == pytest.approx(4 / 3) and m["env/truncated"] == 1.0
    assert m["env/success"] == 0.5 and m["response/truncated_frac"] == pytest.approx(1 / 3)


def test_final_reply_request_for_reward_sources(tiny_model, tokenizer):
    mt = MultiTurn(_cfg(tiny_model), tokenizer, rows(1))
    request = mt.score_request(_batch(), rows(2))
    assert request.completions == ["d", "e", ""]
    assert request.messages[0] == _batch().conversations[0][:3]
    assert request.messages[1] == [{"role": "user", "content": "a"}]


def test_eval_metrics_prefix(tiny_model, tokenizer):
    m = conversation_metrics(_batch(), "eval")
    assert m["eval/success"] == 0.5 and m["eval/unscorable"] == 1.0 and "eval/error" not in m


def test_recipe_table_reads_before_and_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows_ = [
        {"step": 0, "eval/success": 0.4, "eval/success/distance_1": 0.9, "eval/success/distance_3": 0.1},
        {"step": 1, "reward/mean": 0.3},
        {"step": 2, "eval/success": 0.7, "eval/success/distance_1": 0.95, "eval/success/distance_3": 0.5},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows_))
    before, after = evaluations(str(path))
    text, gain = table(before, after)
    assert gain == pytest.approx(0.3)
    assert "3 turns between fact and question  0.100" in text and "+0.400" in text
    assert np.isclose(after["eval/success"], 0.7)
