"""Hand-computed checks for learners.losses."""

import math

import pytest
import torch

from learners.losses import (
    aggregate,
    entropy_from_logits,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=0,
    )


# masked_mean / masked_whiten ------------------------------------------------------------------


def test_masked_mean_all_and_per_dim():
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), 7.0 / 3.0)
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(masked_mean(x, mask, dim=0), [2.5, 2.0, 0.0])


def test_masked_mean_empty_mask_is_zero_and_keeps_grad():
    x = t([[1.0, 2.0]]).requires_grad_()
    out = masked_mean(x, torch.zeros(1, 2, dtype=torch.bool))
    close(out, 0.0)
    out.backward()
    close(x.grad, [[0.0, 0.0]])


def test_masked_mean_ignores_nan_padding():
    x = t([[1.0, 3.0, float("nan")]])
    close(masked_mean(x, t([[1, 1, 0]])), 2.0)


def test_masked_mean_shape_mismatch():
    with pytest.raises(ValueError, match="mask"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4))


def test_masked_whiten_hand_example():
    x = t([[1.0, 2.0, 3.0, 100.0]])
    mask = t([[1, 1, 1, 0]])
    s = math.sqrt(2.0 / 3.0)  # mean 2, population variance (1 + 0 + 1) / 3
    close(masked_whiten(x, mask), [[-1.0 / s, 0.0, 1.0 / s, 0.0]])


def test_masked_whiten_invariants():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64) * 4 + 7
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    w = masked_whiten(x, mask)
    close(masked_mean(w, mask), 0.0)
    close(masked_mean(w**2, mask), 1.0, atol=1e-6)
    assert torch.all(w[~mask] == 0)


# aggregate ------------------------------------------------------------------------------------


def test_aggregate_modes_hand_example():
    loss = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    close(aggregate(loss, mask, "token_mean"), 10.0 / 4.0)
    # Row means 2 and 4; the empty third row is not counted.
    close(aggregate(loss, mask, "seq_mean_token_mean"), 3.0)


def test_aggregate_modes_agree_for_equal_lengths():
    torch.manual_seed(1)
    loss = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.ones(4, 6)
    mask[:, 4:] = 0
    close(aggregate(loss, mask, "token_mean"), aggregate(loss, mask, "seq_mean_token_mean"))


def test_aggregate_unknown_mode():
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate(torch.zeros(1, 2), torch.ones(1, 2), "sum")


# kl_estimate ----------------------------------------------------------------------------------


def test_kl_estimators_hand_values():
    lp = t([[-1.0, -2.0]])
    ref = t([[-1.5, -1.0]])
    close(kl_estimate(lp, ref, "k1"), [[0.5, -1.0]])
    close(kl_estimate(lp, ref, "k2"), [[0.125, 0.5]])
    # log r = ref - lp = [-0.5, 1.0]; k3 = e^r - r - 1
    close(kl_estimate(lp, ref, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2.0]])


def test_kl_k3_nonnegative_zero_at_equal_and_clamped():
    torch.manual_seed(2)
    lp = torch.randn(3, 4, dtype=torch.float64)
    ref = torch.randn(3, 4, dtype=torch.float64)
    assert torch.all(kl_estimate(lp, ref, "k3") >= 0)
    close(kl_estimate(lp, lp, "k3"), torch.zeros(3, 4))
    extreme = kl_estimate(t([[0.0, -1000.0]]), t([[-1000.0, 0.0]]), "k3")
    close(extreme, [[math.exp(-20.0) + 19.0, math.exp(20.0) - 21.0]], atol=1e-3)


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# policy_loss ----------------------------------------------------------------------------------

RATIOS = [1.5, 0.5, 1.1, 0.7]
ADVS = [1.0, 1.0, -2.0, -1.0]


def test_policy_loss_hand_example_and_grad():
    old = t([[-1.0, -2.0, -0.5, -3.0]])
    lp = (old + torch.log(t([RATIOS]))).requires_grad_()
    loss, stats = policy_loss(lp, old, t([ADVS]), torch.ones(1, 4), 0.2, 0.28, "token_mean")
    # Per token: max(-A r, -A clamp(r, 0.8, 1.28)) = [-1.28, -0.5, 2.2, 0.8]; tokens 0 and 3 clip.
    close(loss, (-1.28 - 0.5 + 2.2 + 0.8) / 4)
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx(0.95)
    assert stats["ratio_max"] == pytest.approx(1.5)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in RATIOS) / 4
    assert stats["approx_kl"] == pytest.approx(expected_kl)
    assert all(isinstance(v, float) for v in stats.values())
    loss.backward()
    # d/dlp of -A r is -A r on unclipped tokens; clipped tokens get no gradient.
    close(lp.grad, [[0.0, -0.5 / 4, 2.2 / 4, 0.0]])


def test_policy_loss_padding_with_inf_is_ignored():
    old = t([[-1.0, -2.0, -0.5, -3.0], [-1.0, 0.0, 0.0, 0.0]])
    lp = old.clone()
    lp[0] += torch.log(t(RATIOS))
    lp[1, 1:] = float("inf")
    lp.requires_grad_()
    adv = t([ADVS, [2.0, float("nan"), 5.0, 5.0]])
    mask = t([[1, 1, 1, 1], [1, 0, 0, 0]])
    loss, stats = policy_loss(lp, old, adv, mask, 0.2, 0.28, "seq_mean_token_mean")
    # Row means 0.305 and -2 (ratio 1, A 2).
    close(loss, (0.305 - 2.0) / 2)
    assert stats["ratio_max"] == pytest.approx(1.5)
    assert stats["clipfrac"] == pytest.approx(2 / 5)
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    close(lp.grad[1], [-1.0, 0.0, 0.0, 0.0])


def test_policy_loss_on_policy_is_negative_mean_advantage():
    lp = t([[-0.3, -1.2, -2.0]])
    loss, stats = policy_loss(lp, lp, t([[1.0, -4.0, 9.0]]), t([[1, 1, 0]]), 0.2, 0.2, "token_mean")
    close(loss, 1.5)
    assert stats["clipfrac"] == 0.0
    assert stats["approx_kl"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_policy_loss_empty_mask_stats():
    lp = torch.zeros(1, 2)
    loss, stats = policy_loss(lp, lp, torch.ones(1, 2), torch.zeros(1, 2), 0.2, 0.2, "token_mean")
    close(loss, 0.0)
    assert stats == {"clipfrac": 0.0, "approx_kl": 0.0, "ratio_mean": 0.0, "ratio_max": 0.0}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"clip_low": -0.1}, "clip_low"),
        ({"clip_low": 1.5}, "clip_low"),
        ({"clip_high": -0.2}, "clip_high"),
        ({"loss_agg": "mean"}, "loss_agg"),
    ],
)
def test_policy_loss_validation(kwargs, name):
    args = {"clip_low": 0.2, "clip_high": 0.2, "loss_agg": "token_mean", **kwargs}
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=name):
        policy_loss(z, z, z, torch.ones(1, 2), **args)


def test_policy_loss_shape_mismatch():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(z, z, torch.zeros(1, 3), torch.ones(1, 2), 0.2, 0.2, "token_mean")


# value_loss -----------------------------------------------------------------------------------


def test_value_loss_hand_example():
    values = t([[1.0, 0.5, 1.0, 7.0]]).requires_grad_()
    old = t([[0.5, 0.5, 0.0, 0.0]])
    returns = t([[0.0, 1.0, 1.0, 0.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, 0.2, "token_mean")
    # token 0: max(1, 0.7^2) = 1; token 1: 0.25 both; token 2: max(0, 0.8^2) = 0.64 (clipped).
    close(loss, 0.5 * (1.0 + 0.25 + 0.64) / 3)
    assert stats["vf_clipfrac"] == pytest.approx(1 / 3)
    assert stats["value_mean"] == pytest.approx(2.5 / 3)
    loss.backward()
    # Gradient (v - R) / 3 where unclipped; token 2 is clipped so its value gets none.
    close(values.grad, [[1.0 / 3, -0.5 / 3, 0.0, 0.0]])


def test_value_loss_validation():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip"):
        value_loss(z, z, z, torch.ones(1, 2), -1.0, "token_mean")
    with pytest.raises(ValueError, match="returns"):
        value_loss(z, z, torch.zeros(2, 2), torch.ones(1, 2), 0.2, "token_mean")
    with pytest.raises(ValueError, match="loss_agg"):
        value_loss(z, z, z, torch.ones(1, 2), 0.2, "bogus")


# entropy / logprobs ---------------------------------------------------------------------------


def test_entropy_hand_values_and_stability():
    logits = t([[[0.0, math.log(3.0)], [1000.0, 1000.0]]])
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(entropy_from_logits(logits), [[expected, math.log(2.0)]])
    close(entropy_from_logits(torch.zeros(2, 3, 4)), torch.full((2, 3), math.log(4.0)))


def test_logprobs_hand_values():
    logits = t([[[0.0, math.log(3.0)], [1.0, 1.0]]])
    out = logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    close(out, [[math.log(0.75), math.log(0.5)]])


def test_logprobs_match_log_softmax_and_bf16_upcasts():
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 11) * 3
    labels = torch.randint(0, 11, (2, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    close(logprobs_from_logits(logits, labels), ref, atol=1e-5)
    low = logprobs_from_logits(logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    bf_ref = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels.unsqueeze(-1))
    close(low, bf_ref.squeeze(-1), atol=1e-5)


def test_logprobs_shape_mismatch():
    with pytest.raises(ValueError, match="labels"):
        logprobs_from_logits(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long))
