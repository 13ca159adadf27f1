"""The driver's advantage phase: scores + learner outputs -> per-token training targets.

Runs on the driver because GRPO/RLOO groups and REINFORCE++ whitening need the whole batch,
and it is cheap next to the model phases. Unscorable samples (NaN score) get an all-zero mask:
they take part in nothing, neither group statistics nor the loss.

Multi-turn batches (``rollout.loss_masks`` set) mask the environment's tokens out of
everything, and their per-turn rewards reach the loss where each turn earned them: on each
turn's last token for GAE and REINFORCE++, as returns from each turn for GRPO / RLOO, with
``algorithm.gamma`` discounting over turns (:mod:`learners.advantages`, multi-turn section).
There ``scores`` is the conversation-level reward, added on the last turn.
"""

from __future__ import annotations

import numpy as np
import torch

from learners import advantages as adv
from learners import losses
from pipeline.config import RayppoConfig
from rollout_workers.types import RolloutBatch


def _pad(rows: list, width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(np.asarray(row, dtype=np.float32))
    return out


def _unpad(x: torch.Tensor, lengths: list[int]) -> list[np.ndarray]:
    x = x.numpy()
    return [x[i, :n].astype(np.float32).copy() for i, n in enumerate(lengths)]


def _turn_kl(kl: torch.Tensor, turn_ends: list[list[int]]) -> list[list[float]]:
    """Each turn's summed per-token KL (its tokens: after the previous turn's last one)."""
    sums = []
    for row, ends in zip(kl, turn_ends):
        starts = [0] + [e + 1 for e in ends[:-1]]
        sums.append([float(row[s : e + 1].sum()) for s, e in zip(starts, ends)])
    return sums


def _turn_advantages(cfg, rollout, score_t, mask, reward_kl, kl_coef, values):
    """Multi-turn targets: ``(advantages, returns or None)`` with per-turn credit."""
    algo = cfg.algorithm
    ends = rollout.turn_ends
    if algo.advantage in ("grpo", "rloo"):
        turn_rewards = [list(map(float, r)) for r in rollout.turn_rewards]
        if reward_kl is not None:
            penalties = _turn_kl(reward_kl, ends)
            turn_rewards = [[r - kl_coef * p for r, p in zip(rs, ps)] for rs, ps in zip(turn_rewards, penalties)]
        returns = adv.turn_returns(turn_rewards, score_t, algo.gamma)
        turn_adv = adv.turn_baseline(returns, cfg.rollout.n_samples, algo.advantage, algo.grpo_scale_std)
        return adv.broadcast_turns(turn_adv, ends, mask), None
    rewards = adv.turn_token_rewards(rollout.turn_rewards, score_t, ends, mask, reward_kl, kl_coef)
    discounts = adv.turn_discounts(mask, ends, algo.gamma)
    if algo.advantage == "gae":
        advantages, returns = adv.masked_gae(rewards, values, mask, discounts, algo.lam)
        return losses.masked_whiten(advantages, mask), returns
    if algo.advantage == "reinforce_pp":
        return adv.masked_reinforce_pp(rewards, mask, discounts), None
    raise ValueError(f"algorithm.advantage: unknown estimator {algo.advantage!r}")


def compute(
    cfg: RayppoConfig, rollout: RolloutBatch, scores: np.ndarray, computed: dict[str, list[np.ndarray]]
) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
    algo = cfg.algorithm
    lengths = [len(r) for r in rollout.response_ids]
    width = max(1, max(lengths))
    valid = np.isfinite(scores)
    multi_turn = bool(rollout.loss_masks)
    token_mask = rollout.loss_masks if multi_turn else [np.ones(n) for n in lengths]
    mask = _pad(token_mask, width) * torch.as_tensor(valid, dtype=torch.float32)[:, None]
    score_t = torch.as_tensor(scores, dtype=torch.float32)
    metrics: dict[str, float] = {}

    # The sampling policy's logprobs: the learner's when computed, else the engine's, which the
    # verified weight sync guarantees are the same policy's within rollout.probe_tolerance.
    policy_lp = _pad(computed.get("old_logprobs", rollout.response_logprobs), width)
    kl = None
    if "ref_logprobs" in computed:
        ref_lp = _pad(computed["ref_logprobs"], width)
        kl = losses.kl_estimate(policy_lp, ref_lp, algo.kl_estimator) * mask
        metrics["kl/mean"] = float(losses.masked_mean(losses.kl_estimate(policy_lp, ref_lp, "k3"), mask))
    reward_kl = kl if (kl is not None and algo.kl_mode == "reward") else None
    kl_coef = algo.kl_coef if reward_kl is not None else 0.0

    extras: dict[str, torch.Tensor] = {}
    group = cfg.rollout.n_samples
    if multi_turn:
        values = _pad(computed["old_values"], width) * mask if algo.advantage == "gae" else None
        advantages, returns = _turn_advantages(cfg, rollout, score_t, mask, reward_kl, kl_coef, values)
        if returns is not None:
            extras["returns"] = returns
            extras["old_values"] = values
            metrics["critic/value_mean"] = float(losses.masked_mean(values, mask))
            metrics["critic/return_mean"] = float(losses.masked_mean(returns, mask))
    elif algo.advantage == "gae":
        values = _pad(computed["old_values"], width) * mask
        rewards = adv.token_level_rewards(score_t, mask, reward_kl, kl_coef)
        advantages, returns = adv.gae(rewards, values, mask, algo.gamma, algo.lam)
        advantages = losses.masked_whiten(advantages, mask)
        extras["returns"] = returns
        extras["old_values"] = values
        metrics["critic/value_mean"] = float(losses.masked_mean(values, mask))
        metrics["critic/return_mean"] = float(losses.masked_mean(returns, mask))
    elif algo.advantage in ("grpo", "rloo"):
        seq_scores = score_t.clone()
        if reward_kl is not None:
            seq_scores = seq_scores - kl_coef * reward_kl.sum(-1)
        if algo.advantage == "grpo":
            seq_adv = adv.grpo(seq_scores, group, scale_std=algo.grpo_scale_std)
        else:
            seq_adv = adv.rloo(seq_scores, group)
        advantages = adv.broadcast(seq_adv, mask)
    elif algo.advantage == "reinforce_pp":
        rewards = adv.token_level_rewards(score_t, mask, reward_kl, kl_coef)
        advantages = adv.reinforce_pp(rewards, mask, algo.gamma)
    else:
        raise ValueError(f"algorithm.advantage: unknown estimator {algo.advantage!r}")
    extras["advantages"] = advantages * mask

    out = {k: _unpad(v, lengths) for k, v in extras.items()}
    for key in ("old_logprobs", "ref_logprobs"):
        if key in computed:
            out[key] = computed[key]
    if cfg.rollout.max_staleness > 0:
        # Batches may come from an older policy than the learner's: the PPO ratio is taken
        # against the policy that sampled them, whose logprobs the engine returned.
        out["old_logprobs"] = [np.asarray(lp, dtype=np.float32) for lp in rollout.response_logprobs]
    metrics["advantage/mean"] = float(losses.masked_mean(advantages, mask))
    metrics["advantage/abs_mean"] = float(losses.masked_mean(advantages.abs(), mask))
    if "old_logprobs" in computed:
        engine_lp = _pad(rollout.response_logprobs, width)
        metrics["rollout/logprob_diff"] = float(losses.masked_mean((engine_lp - policy_lp).abs(), mask))
    return out, metrics
