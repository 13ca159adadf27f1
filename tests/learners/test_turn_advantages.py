"""Multi-turn credit (learners/advantages.py, multi-turn section) against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from learners.advantages import (
    broadcast_turns,
    gae,
    masked_gae,
    masked_reinforce_pp,
    reinforce_pp,
    turn_baseline,
    turn_discounts,
    turn_returns,
    turn_token_rewards,
)

NAN = float("nan")


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), atol=atol)


# Two assistant turns (tokens 0-1 and 4) around two environment tokens (2-3).
MASK = t([[1, 1, 0, 0, 1]])
ENDS = [[1, 4]]


def test_turn_discounts_sit_on_turn_ends():
    close(turn_discounts(MASK, ENDS, 0.9), [[1.0, 0.9, 1.0, 1.0, 0.9]])
    with pytest.raises(ValueError, match="gamma"):
        turn_discounts(MASK, ENDS, 1.5)


def test_turn_token_rewards_hand_example():
    # Turn rewards 0.5 and 1.0 on each turn's last token, the conversation reward 2.0 on the
    # last turn's, minus 0.5 x KL 0.1 on assistant tokens only.
    rewards = turn_token_rewards([[0.5, 1.0]], t([2.0]), ENDS, MASK, t([[0.1] * 5]), kl_coef=0.5)
    close(rewards, [[-0.05, 0.45, 0.0, 0.0, 2.95]])
    # An unscorable conversation (NaN) earns nothing anywhere.
    close(turn_token_rewards([[0.5, 1.0]], t([NAN]), ENDS, MASK), [[0.0] * 5])
    with pytest.raises(ValueError, match="2 turn rewards for 1 turns"):
        turn_token_rewards([[0.5, 1.0]], t([0.0]), [[4]], MASK)


def test_masked_gae_hand_example():
    # gamma 0.9 between turns, lam 0.8; V on env tokens is ignored (set to 9).
    # t=4: delta = 1.0 - 0.6 = 0.4                                A4 = 0.4
    # t=1: delta = 0.5 + 0.9 * 0.6 - 0.4 = 0.64 (next: token 4)    A1 = 0.64 + 0.9 * 0.8 * 0.4 = 0.928
    # t=0: delta = 0 + 1.0 * 0.4 - 0.2 = 0.2 (same turn)           A0 = 0.2 + 0.8 * 0.928 = 0.9424
    rewards = t([[0.0, 0.5, 0.0, 0.0, 1.0]])
    values = t([[0.2, 0.4, 9.0, 9.0, 0.6]])
    adv, ret = masked_gae(rewards, values, MASK, turn_discounts(MASK, ENDS, 0.9), lam=0.8)
    close(adv, [[0.9424, 0.928, 0.0, 0.0, 0.4]])
    close(ret, [[1.1424, 1.328, 0.0, 0.0, 1.0]])


def test_masked_gae_with_a_contiguous_mask_is_gae():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = t([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5])
    discounts = torch.full((3, 6), 0.9)
    a1, r1 = masked_gae(rewards, values, mask, discounts, lam=0.7)
    a2, r2 = gae(rewards, values, mask, gamma=0.9, lam=0.7)
    close(a1, a2)
    close(r1, r2)


def test_masked_reinforce_pp_hand_example():
    # Returns G4 = 1.0, G1 = 0.5 + 0.5 * 1.0 = 1.0, G0 = 0.2 + G1 = 1.2, whitened over the three.
    rewards = t([[0.2, 0.5, 7.0, 7.0, 1.0]])
    out = masked_reinforce_pp(rewards, MASK, turn_discounts(MASK, ENDS, 0.5))
    g = np.array([1.2, 1.0, 1.0])
    w = (g - g.mean()) / np.sqrt(g.var() + 1e-8)
    close(out, [[w[0], w[1], 0.0, 0.0, w[2]]], atol=1e-5)
    # Contiguous mask, constant discount: REINFORCE++.
    mask = t([[1, 1, 1], [1, 1, 0]])
    r = t([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    close(masked_reinforce_pp(r, mask, torch.full((2, 3), 0.5)), reinforce_pp(r, mask, 0.5))


def test_turn_returns_hand_example():
    # gamma 0.5. Row 0: G2 = 1.0 + 0.5 (conversation) = 1.5, G1 = 0.1 + 0.5 * 1.5 = 0.85,
    # G0 = 0.1 + 0.5 * 0.85 = 0.525. Row 1 (two turns): G1 = 0.0 + 2.0, G0 = 0.3 + 1.0.
    out = turn_returns([[0.1, 0.1, 1.0], [0.3, 0.0], [0.5]], t([0.5, 2.0, NAN]), gamma=0.5)
    close(out[:2], [[0.525, 0.85, 1.5], [1.3, 2.0, NAN]])
    assert torch.isnan(out[2]).all()  # unscorable
    assert turn_returns([[]], t([1.0]), 1.0).shape == (1, 0)


def test_turn_baseline_rloo_and_grpo_per_turn_index():
    returns = t([[0.525, 0.85, 1.5], [0.1, 0.0, 0.0], [1.0, 2.0, NAN], [0.0, 0.0, NAN]])
    # RLOO in groups of two, turn by turn: x - other.
    close(turn_baseline(returns, 2, "rloo"),
          [[0.425, 0.85, 1.5], [-0.425, -0.85, -1.5], [1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]])
    # GRPO: in a pair, (x - mean) / (population std + eps) is +-1.
    a = 1 / (1 + 1e-6 / 0.2125)
    grpo = turn_baseline(returns, 2, "grpo")
    close(grpo[:, 0], [a, -a, 1.0, -1.0], atol=1e-5)
    close(grpo[2:, 2], [0.0, 0.0])  # only one row reached turn 2 in that group: no baseline
    close(turn_baseline(returns, 2, "grpo", scale_std=False)[0], [0.2125, 0.425, 0.75])
    with pytest.raises(ValueError, match="estimator"):
        turn_baseline(returns, 2, "gae")


def test_one_turn_without_turn_rewards_is_plain_grpo():
    from learners.advantages import grpo

    scores = t([1.0, 0.0, 2.0, 5.0])
    returns = turn_returns([[0.0]] * 4, scores, gamma=0.9)
    close(turn_baseline(returns, 2, "grpo")[:, 0], grpo(scores, 2))


def test_broadcast_turns_gives_each_turn_its_advantage():
    mask = t([[1, 1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0]])
    out = broadcast_turns(t([[2.0, -1.0], [0.5, 0.0]]), [[1, 5], [0]], mask)
    close(out, [[2.0, 2.0, 0.0, 0.0, -1.0, -1.0, 0.0], [0.5, 0, 0, 0, 0, 0, 0]])
    assert math.isfinite(float(out.sum()))
