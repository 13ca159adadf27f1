"""The driver's advantage phase on multi-turn batches: environment tokens carry nothing and
per-turn rewards reach the turns that earned them (hand-computed)."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.controller import advantages
from rollout_workers.types import RolloutBatch

# Two conversations of one opening (a GRPO group of 2): turns of 2 and 1 tokens with two
# environment tokens between them.
MASKS = [[1, 1, 0, 0, 1], [1, 0, 0, 1, 1]]
ENDS = [[1, 4], [0, 4]]


def _cfg(*overrides):
    return load_config(None, ["rollout.n_samples=2", "prompts_per_step=1", *overrides])


def _batch(turn_rewards=([0.1, 1.0], [0.1, 0.0])):
    return RolloutBatch(
        prompt_ids=[[10, 11]] * 2,
        response_ids=[[1, 2, 3, 4, 5], [6, 7, 8, 9, 2]],
        response_logprobs=[[-0.5, -0.6, 0.0, 0.0, -0.7], [-0.2, 0.0, 0.0, -0.3, -0.4]],
        finish_reasons=["stop"] * 2,
        prompt_index=[0, 0],
        loss_masks=[list(m) for m in MASKS],
        turn_ends=[list(e) for e in ENDS],
        turn_rewards=[list(r) for r in turn_rewards],
        conversation_rewards=[0.0, 0.0],
        env_infos=[{}, {}],
    )


def _assert_rows(actual, expected):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, np.asarray(e, dtype=np.float64), atol=1e-6)


def test_grpo_turn_returns_per_turn_index():
    cfg = _cfg("algorithm.advantage=rloo", "algorithm.gamma=0.5")
    out, metrics = advantages.compute(cfg, _batch(), np.array([0.0, 2.0]), {})
    # Returns (gamma 0.5, conversation reward on the last turn): row 0: G1 = 1.0, G0 = 0.1 + 0.5;
    # row 1: G1 = 0.0 + 2.0, G0 = 0.1 + 1.0. RLOO per turn index: G - the other's G.
    # turn 0: 0.6 - 1.1 = -0.5 and +0.5; turn 1: 1.0 - 2.0 = -1.0 and +1.0.
    _assert_rows(out["advantages"], [[-0.5, -0.5, 0, 0, -1.0], [0.5, 0, 0, 1.0, 1.0]])
    assert metrics["advantage/mean"] == pytest.approx((-2 * 0.5 - 1 + 0.5 + 2) / 6)


def test_reward_kl_is_charged_to_the_turn_it_happens_in():
    cfg = _cfg("algorithm.advantage=rloo", "algorithm.gamma=1.0", "algorithm.kl_coef=1.0",
               "algorithm.kl_mode=reward", "algorithm.kl_estimator=k1")
    old = [np.array([-0.5, -0.6, -9, -9, -0.7], np.float32), np.array([-0.2, -9, -9, -0.3, -0.4], np.float32)]
    ref = [np.array([-0.5, -0.8, 0, 0, -0.7], np.float32), np.array([-0.2, 0, 0, -0.3, -0.4], np.float32)]
    out, metrics = advantages.compute(cfg, _batch(), np.array([0.0, 0.0]), {"old_logprobs": old, "ref_logprobs": ref})
    # k1 KL: row 0 turn 0 has 0.2 (token 1), nothing else on assistant tokens; env tokens count
    # nothing although their logprobs differ. Row 0: r = [0.1 - 0.2, 1.0], G = [0.9, 1.0];
    # row 1: G = [0.1, 0.0]. RLOO: turn 0 +-0.8, turn 1 +-1.0.
    _assert_rows(out["advantages"], [[0.8, 0.8, 0, 0, 1.0], [-0.8, 0, 0, -1.0, -1.0]])
    assert metrics["kl/mean"] > 0


def test_gae_places_turn_rewards_on_turn_ends():
    cfg = _cfg("algorithm.advantage=gae", "algorithm.gamma=1.0", "algorithm.lam=1.0")
    values = [np.zeros(5, np.float32), np.zeros(5, np.float32)]
    out, _ = advantages.compute(cfg, _batch(), np.array([0.5, np.nan]), {"old_values": values})
    # gamma = lam = 1, V = 0: the return of a token is the reward still to come after it, on
    # assistant tokens: row 0 -> 0.1 + 1.0 + 0.5 on turn 0, 1.5 on turn 1; row 1 unscorable.
    _assert_rows(out["returns"], [[1.6, 1.6, 0, 0, 1.5], [0] * 5])
    assert out["advantages"][0][2:4].tolist() == [0.0, 0.0]
    assert out["advantages"][1].tolist() == [0.0] * 5


def test_reinforce_pp_and_env_tokens():
    cfg = _cfg("algorithm.advantage=reinforce_pp", "algorithm.gamma=1.0")
    out, _ = advantages.compute(cfg, _batch(), np.array([0.0, 0.0]), {})
    # Returns on assistant tokens: row 0 [1.1, 1.1, 1.0]; row 1 [0.1, 0.0, 0.0]; whitened.
    g = np.array([1.1, 1.1, 1.0, 0.1, 0.0, 0.0])
    w = (g - g.mean()) / np.sqrt(g.var() + 1e-8)
    _assert_rows(out["advantages"], [[w[0], w[1], 0, 0, w[2]], [w[3], 0, 0, w[4], w[5]]])


def test_single_turn_batches_are_unchanged():
    cfg = _cfg("algorithm.advantage=grpo")
    single = RolloutBatch(prompt_ids=[[1], [1]], response_ids=[[5, 6], [7]], response_logprobs=[[-1, -1], [-1]],
                          finish_reasons=["stop"] * 2, prompt_index=[0, 0])
    out, _ = advantages.compute(cfg, single, np.array([1.0, 0.0]), {})
    a = 0.5 / (0.5 + 1e-6)
    _assert_rows(out["advantages"], [[a, a], [-a]])
