"""The driver's advantage phase on hand-sized batches with hand-computed targets."""

import math

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.controller import advantages
from rollout_workers.types import RolloutBatch

LENGTHS = [3, 1, 2, 4]  # 2 prompts x 2 samples, ragged responses


def _cfg(*overrides, n_samples=2):
    return load_config(None, [f"rollout.n_samples={n_samples}", "prompts_per_step=2", *overrides])


def _rollout(lengths=LENGTHS, n_samples=2):
    logprobs = [[-0.1 * (i + 1) - 0.01 * t for t in range(n)] for i, n in enumerate(lengths)]
    return RolloutBatch(
        prompt_ids=[[10 + i // n_samples, 11] for i in range(len(lengths))],
        response_ids=[list(range(1, n + 1)) for n in lengths],
        response_logprobs=logprobs,
        finish_reasons=["stop"] * len(lengths),
        prompt_index=[i // n_samples for i in range(len(lengths))],
    )


def _arrays(rows):
    return [np.asarray(r, dtype=np.float32) for r in rows]


def _check_lengths(out, lengths=LENGTHS):
    for key, rows in out.items():
        assert [len(r) for r in rows] == lengths, key


def _assert_rows(actual, expected, atol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, np.asarray(e, dtype=np.float64), rtol=0, atol=atol)


def _broadcast(seq_adv, lengths=LENGTHS):
    return [[a] * n for a, n in zip(seq_adv, lengths)]


# ----------------------------------------------------------------------------- grpo / rloo
def test_grpo_group_normalised_scores_on_every_token():
    cfg = _cfg("algorithm.advantage=grpo")
    scores = np.array([1.0, 0.0, 2.0, 5.0])
    out, metrics = advantages.compute(cfg, _rollout(), scores, {})
    assert set(out) == {"advantages"}
    _check_lengths(out)
    # group 1: mean 0.5, population std 0.5; group 2: mean 3.5, std 1.5; eps = 1e-6.
    a = 0.5 / (0.5 + 1e-6)
    b = 1.5 / (1.5 + 1e-6)
    _assert_rows(out["advantages"], _broadcast([a, -a, -b, b]))
    assert all(r.dtype == np.float32 for r in out["advantages"])
    # Token-weighted: (3a - a - 2b + 4b) / 10.
    assert metrics["advantage/mean"] == pytest.approx((2 * a + 2 * b) / 10, abs=1e-6)
    assert metrics["advantage/abs_mean"] == pytest.approx((4 * a + 6 * b) / 10, abs=1e-6)
    assert "kl/mean" not in metrics and "rollout/logprob_diff" not in metrics


def test_grpo_without_std_scaling():
    cfg = _cfg("algorithm.advantage=grpo", "algorithm.grpo_scale_std=false")
    out, _ = advantages.compute(cfg, _rollout(), np.array([1.0, 0.0, 2.0, 5.0]), {})
    _assert_rows(out["advantages"], _broadcast([0.5, -0.5, -1.5, 1.5]))


def test_grpo_nan_score_is_left_out_of_its_group():
    cfg = _cfg("algorithm.advantage=grpo", n_samples=3)
    lengths = [2, 3, 1, 1, 2, 2]
    scores = np.array([1.0, np.nan, 3.0, 0.0, 0.0, 6.0])
    out, metrics = advantages.compute(cfg, _rollout(lengths, 3), scores, {})
    _check_lengths(out, lengths)
    # group 1 statistics over {1, 3} only: mean 2, std 1 (with NaN as 0 the mean would be 4/3).
    # group 2: {0, 0, 6}: mean 2, std sqrt((4 + 4 + 16) / 3) = sqrt(8).
    a = 1.0 / (1.0 + 1e-6)
    s = math.sqrt(8.0)
    expected = [-a, 0.0, a, -2 / (s + 1e-6), -2 / (s + 1e-6), 4 / (s + 1e-6)]
    _assert_rows(out["advantages"], _broadcast(expected, lengths))
    # The unscorable sample is masked out of the metrics as well (7 valid tokens, not 10).
    valid = [(e, n) for e, n in zip(expected, lengths) if e != 0.0]
    mean = sum(e * n for e, n in valid) / sum(n for _, n in valid)
    assert metrics["advantage/mean"] == pytest.approx(mean, abs=1e-6)


def test_grpo_nan_in_a_pair_zeroes_the_whole_group():
    cfg = _cfg("algorithm.advantage=grpo")
    out, _ = advantages.compute(cfg, _rollout(), np.array([np.nan, 1.0, 2.0, 5.0]), {})
    b = 1.5 / (1.5 + 1e-6)
    _assert_rows(out["advantages"], _broadcast([0.0, 0.0, -b, b]))
    assert all(np.isfinite(r).all() for r in out["advantages"])


def test_rloo_hand_computed():
    cfg = _cfg("algorithm.advantage=rloo")
    out, _ = advantages.compute(cfg, _rollout(), np.array([1.0, 0.0, 2.0, 5.0]), {})
    _assert_rows(out["advantages"], _broadcast([1.0, -1.0, -3.0, 3.0]))


def test_rloo_groups_of_three_with_nan():
    cfg = _cfg("algorithm.advantage=rloo", n_samples=3)
    lengths = [1, 2, 3, 2, 2, 1]
    scores = np.array([1.0, 2.0, 6.0, 4.0, np.nan, 0.0])
    out, _ = advantages.compute(cfg, _rollout(lengths, 3), scores, {})
    # 1 - (2+6)/2, 2 - (1+6)/2, 6 - (1+2)/2 ; 4 - 0, NaN -> 0, 0 - 4.
    _assert_rows(out["advantages"], _broadcast([-3.0, -1.5, 4.5, 4.0, 0.0, -4.0], lengths))


# ----------------------------------------------------------------------------- gae
def test_gae_gamma_lam_one_returns_equal_score():
    cfg = _cfg("algorithm.advantage=gae", "algorithm.gamma=1.0", "algorithm.lam=1.0")
    scores = np.array([1.0, 0.0, 2.0, 5.0])
    values = [[0.5, 0.25, 0.0], [0.5], [1.0, 3.0], [2.0, 2.0, 4.0, 1.0]]
    out, metrics = advantages.compute(cfg, _rollout(), scores, {"old_values": _arrays(values)})
    assert set(out) == {"advantages", "returns", "old_values"}
    _check_lengths(out)
    # gamma = lam = 1: advantage_t = score - V_t, return_t = score on every valid token.
    _assert_rows(out["returns"], _broadcast(scores))
    _assert_rows(out["old_values"], values)
    raw = np.concatenate([s - np.asarray(v) for s, v in zip(scores, values)])
    whitened = (raw - raw.mean()) / np.sqrt(raw.var() + 1e-8)
    _assert_rows([np.concatenate(out["advantages"])], [whitened], atol=1e-5)
    flat = np.concatenate(out["advantages"])
    assert abs(flat.mean()) < 1e-6 and flat.std() == pytest.approx(1.0, abs=1e-4)
    assert metrics["critic/value_mean"] == pytest.approx(np.concatenate(values).mean(), abs=1e-6)
    assert metrics["critic/return_mean"] == pytest.approx((3 * 1 + 0 + 2 * 2 + 4 * 5) / 10, abs=1e-6)
    assert metrics["advantage/mean"] == pytest.approx(0.0, abs=1e-6)


def test_gae_one_step_td_targets():
    # lam = 0: advantage_t = r_t + gamma * V_{t+1} - V_t, return_t = r_t + gamma * V_{t+1}.
    cfg = _cfg("algorithm.advantage=gae", "algorithm.gamma=0.5", "algorithm.lam=0.0")
    scores = np.array([1.0, 0.0, 2.0, 5.0])
    values = [[0.5, 0.25, 0.0], [0.5], [1.0, 3.0], [2.0, 2.0, 4.0, 1.0]]
    out, _ = advantages.compute(cfg, _rollout(), scores, {"old_values": _arrays(values)})
    expected_returns = [
        [0.5 * 0.25, 0.5 * 0.0, 1.0],
        [0.0],
        [0.5 * 3.0, 2.0],
        [0.5 * 2.0, 0.5 * 4.0, 0.5 * 1.0, 5.0],
    ]
    _assert_rows(out["returns"], expected_returns)
    raw = np.concatenate([np.subtract(r, v) for r, v in zip(expected_returns, values)])
    whitened = (raw - raw.mean()) / np.sqrt(raw.var() + 1e-8)
    _assert_rows([np.concatenate(out["advantages"])], [whitened], atol=1e-5)


def test_gae_nan_score_masks_its_sample():
    cfg = _cfg("algorithm.advantage=gae")
    values = [[0.5, 0.25, 0.0], [0.5], [1.0, 3.0], [2.0, 2.0, 4.0, 1.0]]
    out, metrics = advantages.compute(
        cfg, _rollout(), np.array([1.0, np.nan, 2.0, 5.0]), {"old_values": _arrays(values)}
    )
    _check_lengths(out)
    for key in ("advantages", "returns", "old_values"):
        assert out[key][1].tolist() == [0.0], key
        assert all(np.isfinite(r).all() for r in out[key])
    valid = np.concatenate([out["advantages"][i] for i in (0, 2, 3)])
    assert abs(valid.mean()) < 1e-6
    assert metrics["critic/value_mean"] == pytest.approx(np.concatenate(values[:1] + values[2:]).mean())


# ----------------------------------------------------------------------------- kl
def _kl_inputs():
    old = [[-1.0, -0.5, -2.0], [-0.3], [-1.2, -0.7], [-0.1, -0.2, -0.3, -0.4]]
    ref = [[-1.5, -0.5, -1.0], [-0.8], [-1.0, -0.7], [-0.4, -0.2, -0.1, -1.4]]
    return old, ref


def test_kl_mean_is_masked_mean_of_k3():
    cfg = _cfg("algorithm.advantage=grpo", "algorithm.kl_coef=0.1", "algorithm.kl_estimator=k1")
    old, ref = _kl_inputs()
    computed = {"old_logprobs": _arrays(old), "ref_logprobs": _arrays(ref)}
    scores = np.array([1.0, 0.0, 2.0, 5.0])
    out, metrics = advantages.compute(cfg, _rollout(), scores, computed)
    # kl/mean is always k3 (non-negative), whatever estimator the loss uses.
    d = np.concatenate([np.subtract(r, o) for o, r in zip(old, ref)])
    k3 = np.exp(d) - d - 1.0
    assert metrics["kl/mean"] == pytest.approx(k3.mean(), rel=1e-5)
    assert metrics["kl/mean"] > 0
    # Passed through unchanged for the loss.
    assert out["old_logprobs"] is computed["old_logprobs"]
    assert out["ref_logprobs"] is computed["ref_logprobs"]
    # kl_mode=loss (default): the KL does not touch the advantages.
    plain, _ = advantages.compute(cfg, _rollout(), scores, {})
    _assert_rows(out["advantages"], plain["advantages"])
    # Engine vs learner logprobs, token-weighted.
    engine = np.concatenate(_rollout().response_logprobs)
    assert metrics["rollout/logprob_diff"] == pytest.approx(
        np.abs(engine - np.concatenate(old)).mean(), rel=1e-5
    )


def test_stale_batches_take_the_ratio_against_the_engines_logprobs():
    # One step ahead, the sampling policy is the engine's: its logprobs become the PPO "old"
    # logprobs, and the reference KL is measured from the same sampling policy.
    cfg = _cfg("algorithm.advantage=grpo", "rollout.max_staleness=1")
    _, ref = _kl_inputs()
    rollout = _rollout()
    out, metrics = advantages.compute(cfg, rollout, np.array([1.0, 0.0, 2.0, 5.0]), {"ref_logprobs": _arrays(ref)})
    _assert_rows(out["old_logprobs"], rollout.response_logprobs)
    assert all(row.dtype == np.float32 for row in out["old_logprobs"])
    d = np.concatenate([np.subtract(r, o) for o, r in zip(rollout.response_logprobs, ref)])
    assert metrics["kl/mean"] == pytest.approx((np.exp(d) - d - 1.0).mean(), rel=1e-5)
    assert "rollout/logprob_diff" not in metrics
    # On-policy the learner's update takes its own (detached) logprobs: nothing is added.
    fresh, _ = advantages.compute(_cfg("algorithm.advantage=grpo"), rollout, np.array([1.0, 0.0, 2.0, 5.0]), {})
    assert "old_logprobs" not in fresh


def test_kl_mean_ignores_nan_scored_samples():
    cfg = _cfg("algorithm.advantage=grpo")
    old, ref = _kl_inputs()
    computed = {"old_logprobs": _arrays(old), "ref_logprobs": _arrays(ref)}
    _, metrics = advantages.compute(cfg, _rollout(), np.array([1.0, 0.0, np.nan, 5.0]), computed)
    d = np.concatenate([np.subtract(ref[i], old[i]) for i in (0, 1, 3)])
    assert metrics["kl/mean"] == pytest.approx((np.exp(d) - d - 1.0).mean(), rel=1e-5)


def test_kl_reward_mode_shifts_grpo_scores_by_kl_coef_sum_kl():
    coef = 0.5
    cfg = _cfg(
        "algorithm.advantage=grpo",
        "algorithm.grpo_scale_std=false",
        "algorithm.kl_mode=reward",
        f"algorithm.kl_coef={coef}",
        "algorithm.kl_estimator=k1",
    )
    old, ref = _kl_inputs()
    computed = {"old_logprobs": _arrays(old), "ref_logprobs": _arrays(ref)}
    scores = np.array([1.0, 0.0, 2.0, 5.0])
    out, _ = advantages.compute(cfg, _rollout(), scores, computed)
    # k1 sums: 0.5 + 0 - 1 = -0.5 ; 0.5 ; -0.2 + 0 = -0.2 ; 0.3 + 0 - 0.2 + 1.0 = 1.1
    kl_sum = np.array([-0.5, 0.5, -0.2, 1.1])
    np.testing.assert_allclose(
        kl_sum, [np.sum(np.subtract(o, r)) for o, r in zip(old, ref)], atol=1e-12
    )
    shaped = scores - coef * kl_sum  # [1.25, -0.25, 2.1, 4.45]
    centred = [
        (shaped[0] - shaped[1]) / 2, (shaped[1] - shaped[0]) / 2,
        (shaped[2] - shaped[3]) / 2, (shaped[3] - shaped[2]) / 2,
    ]
    np.testing.assert_allclose(centred, [0.75, -0.75, -1.175, 1.175], atol=1e-12)
    _assert_rows(out["advantages"], _broadcast(centred), atol=1e-5)
    # Same config without the reference: plain score differences.
    plain, _ = advantages.compute(cfg, _rollout(), scores, {"old_logprobs": _arrays(old)})
    _assert_rows(plain["advantages"], _broadcast([0.5, -0.5, -1.5, 1.5]))


def test_engine_logprobs_used_when_learner_did_not_compute_them():
    # kl against the engine's own logprobs when no old_logprobs were computed.
    cfg = _cfg("algorithm.advantage=grpo")
    rollout = _rollout()
    ref = [np.asarray(r, dtype=np.float32) - 0.25 for r in rollout.response_logprobs]
    _, metrics = advantages.compute(cfg, rollout, np.array([1.0, 0.0, 2.0, 5.0]), {"ref_logprobs": ref})
    d = -0.25
    assert metrics["kl/mean"] == pytest.approx(math.exp(d) - d - 1.0, rel=1e-4)
    assert "rollout/logprob_diff" not in metrics


# ----------------------------------------------------------------------------- reinforce++
def test_reinforce_pp_whitened_reward_to_go():
    cfg = _cfg("algorithm.advantage=reinforce_pp", "algorithm.gamma=1.0")
    scores = np.array([1.0, 0.0, 2.0, 5.0])
    out, _ = advantages.compute(cfg, _rollout(), scores, {})
    raw = np.concatenate([[s] * n for s, n in zip(scores, LENGTHS)])
    whitened = (raw - raw.mean()) / np.sqrt(raw.var() + 1e-8)
    _assert_rows([np.concatenate(out["advantages"])], [whitened], atol=1e-5)
