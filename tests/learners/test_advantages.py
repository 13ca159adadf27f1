"""Hand-computed checks for learners.advantages."""

import math

import pytest
import torch

from learners.advantages import broadcast, gae, grpo, reinforce_pp, rloo, token_level_rewards
from learners.losses import masked_mean

NAN = float("nan")


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=0,
    )


# token_level_rewards --------------------------------------------------------------------------


def test_token_level_rewards_places_score_on_last_valid_token():
    mask = t([[1, 1, 1], [1, 0, 0], [1, 1, 0]]).bool()
    out = token_level_rewards(t([1.0, 2.0, -3.0]), mask)
    close(out, [[0, 0, 1.0], [2.0, 0, 0], [0, -3.0, 0]])


def test_token_level_rewards_with_kl_penalty():
    mask = t([[1, 1, 1], [1, 0, 0]])
    kl = t([[0.1, 0.2, 0.3], [0.4, NAN, 9.0]])
    out = token_level_rewards(t([1.0, 2.0]), mask, kl=kl, kl_coef=0.5)
    close(out, [[-0.05, -0.1, 1.0 - 0.15], [2.0 - 0.2, 0.0, 0.0]])


def test_token_level_rewards_nan_score_and_empty_row_are_zero():
    mask = t([[1, 1], [0, 0], [1, 0]])
    kl = torch.ones(3, 2, dtype=torch.float64)
    out = token_level_rewards(t([NAN, 5.0, 4.0]), mask, kl=kl, kl_coef=0.1)
    close(out, [[0.0, 0.0], [0.0, 0.0], [3.9, 0.0]])


def test_token_level_rewards_shape_errors():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="scores"):
        token_level_rewards(torch.zeros(3), mask)
    with pytest.raises(ValueError, match="kl"):
        token_level_rewards(torch.zeros(2), mask, kl=torch.zeros(2, 4), kl_coef=0.1)


# gae ------------------------------------------------------------------------------------------


def test_gae_hand_example_1x3():
    # gamma = 0.9, lam = 0.8 so gamma * lam = 0.72; V after the last token is 0.
    # t=2: delta = 1 - 0.7 = 0.3                      A2 = 0.3
    # t=1: delta = 0.9 * 0.7 - 0.6 = 0.03             A1 = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0.9 * 0.6 - 0.5 = 0.04             A0 = 0.04 + 0.72 * 0.246 = 0.21712
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_padding_does_not_change_valid_tokens():
    rewards = t([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 7.0, 7.0]])
    values = t([[0.5, 0.6, 0.7, 0.0, 0.0], [0.5, 0.6, 0.7, 3.0, NAN]])
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row in range(2):
        close(adv[row], [0.21712, 0.246, 0.3, 0.0, 0.0])
        close(ret[row], [0.71712, 0.846, 1.0, 0.0, 0.0])


def test_gae_limits_lam_one_and_lam_zero():
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    # gamma = lam = 1: advantage is reward-to-go minus V, returns are reward-to-go.
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])
    # lam = 0: advantage is the one-step TD residual.
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    close(adv, [[0.04, 0.03, 0.3]])


def test_gae_is_not_whitened_and_carries_no_grad():
    values = t([[0.5, 0.6, 0.7]]).requires_grad_()
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    assert not adv.requires_grad and not ret.requires_grad
    assert masked_mean(adv, torch.ones(1, 3)).item() == pytest.approx((0.21712 + 0.246 + 0.3) / 3)


@pytest.mark.parametrize("gamma, lam, name", [(1.5, 0.9, "gamma"), (0.9, -0.1, "lam")])
def test_gae_validation(gamma, lam, name):
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=name):
        gae(z, z, torch.ones(1, 2), gamma=gamma, lam=lam)


def test_gae_shape_error():
    with pytest.raises(ValueError, match="values"):
        gae(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2), gamma=1.0, lam=1.0)


# grpo -----------------------------------------------------------------------------------------


def test_grpo_hand_example():
    scores = t([1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0])
    eps = 1e-6
    # Group 1: mean 0.5, population std 0.5. Group 2: mean 5, std sqrt((9+1+1+9)/4) = sqrt(5).
    s2 = math.sqrt(5.0) + eps
    expected = [0.5 / (0.5 + eps), -0.5 / (0.5 + eps), -0.5 / (0.5 + eps), 0.5 / (0.5 + eps)]
    expected += [-3 / s2, -1 / s2, 1 / s2, 3 / s2]
    close(grpo(scores, group_size=4, eps=eps), expected)


def test_grpo_without_std_scaling_and_int_scores():
    out = grpo(torch.tensor([1, 2, 3, 10, 20, 30]), group_size=3, scale_std=False)
    assert out.is_floating_point()
    close(out, [-1.0, 0.0, 1.0, -10.0, 0.0, 10.0])


def test_grpo_nan_and_degenerate_groups():
    scores = t([1.0, NAN, 3.0, 2.0, NAN, 5.0, NAN, NAN, 4.0, 4.0, 4.0, 4.0])
    out = grpo(scores, group_size=4)
    s = math.sqrt(2.0 / 3.0)  # finite [1, 3, 2]: mean 2, population variance 2/3
    close(out[:4], [-1 / (s + 1e-6), 0.0, 1 / (s + 1e-6), 0.0])
    close(out[4:8], [0.0] * 4)  # one finite score
    close(out[8:], [0.0] * 4)  # zero spread
    assert torch.isfinite(out).all()


def test_grpo_invariants():
    torch.manual_seed(0)
    scores = torch.randn(12, dtype=torch.float64) * 3 + 1
    out = grpo(scores, group_size=4, eps=0.0).view(3, 4)
    close(out.mean(-1), torch.zeros(3))
    close(out.std(-1, unbiased=False), torch.ones(3))


@pytest.mark.parametrize("batch, group_size", [(6, 4), (4, 0), (4, -2)])
def test_grpo_group_size_errors(batch, group_size):
    with pytest.raises(ValueError, match="group_size"):
        grpo(torch.zeros(batch), group_size=group_size)


# rloo -----------------------------------------------------------------------------------------


def test_rloo_hand_example():
    # Sum 12: adv_i = s_i - (12 - s_i) / 3.
    out = rloo(t([1.0, 2.0, 3.0, 6.0]), group_size=4)
    close(out, [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0])
    # Equivalent closed form n / (n - 1) * (s - mean).
    close(out, 4 / 3 * (t([1.0, 2.0, 3.0, 6.0]) - 3.0))


def test_rloo_nan_handling():
    out = rloo(t([1.0, NAN, 3.0, NAN, 2.0, NAN]), group_size=3)
    close(out, [-2.0, 0.0, 2.0, 0.0, 0.0, 0.0])


def test_rloo_group_size_error():
    with pytest.raises(ValueError, match="group_size"):
        rloo(torch.zeros(5), group_size=2)


# reinforce_pp / broadcast ---------------------------------------------------------------------


def test_reinforce_pp_hand_example():
    rewards = t([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    # Reward-to-go (gamma 0.5): [0.25, 0.5, 1] and [1, 2, -]; mean 0.95, population std 0.6.
    out = reinforce_pp(rewards, mask, gamma=0.5)
    close(out, [[-0.7 / 0.6, -0.45 / 0.6, 0.05 / 0.6], [0.05 / 0.6, 1.05 / 0.6, 0.0]])
    close(masked_mean(out, mask), 0.0)


def test_reinforce_pp_validation():
    with pytest.raises(ValueError, match="gamma"):
        reinforce_pp(torch.zeros(1, 2), torch.ones(1, 2), gamma=-0.5)


def test_broadcast():
    out = broadcast(t([2.0, -1.0, 3.0]), t([[1, 1, 0], [1, 0, 0], [0, 0, 0]]))
    close(out, [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="seq_adv"):
        broadcast(torch.zeros(2), torch.ones(3, 2))


def test_grpo_then_broadcast_end_to_end():
    mask = t([[1, 1, 0], [1, 0, 0]])
    per_token = broadcast(grpo(t([1.0, 0.0]), group_size=2, scale_std=False), mask)
    close(per_token, [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]])
