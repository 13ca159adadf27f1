"""Reward shaping and advantage estimators: GAE, GRPO, RLOO and REINFORCE++.

Per-token tensors are ``[B, T]`` right-padded response sequences with ``mask`` (bool or 0/1
float) marking valid tokens, contiguous from position 0. Per-sequence scores are ``[B]``; a NaN
score marks a sequence with no usable reward (e.g. a failed verifier) and yields zero advantage.
Everything here computes training targets, so inputs are detached and results carry no grad.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learners.losses import masked_whiten


def _float(t: Tensor) -> Tensor:
    t = t.detach()
    return t if t.is_floating_point() else t.float()


def _check_mask(name: str, tensor: Tensor, mask: Tensor) -> None:
    if tensor.shape != mask.shape:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but mask has shape {tuple(mask.shape)}; "
            "they must match"
        )


def _check_per_sequence(name: str, tensor: Tensor, mask: Tensor) -> None:
    if tensor.dim() != 1 or tensor.shape[0] != mask.shape[0]:
        raise ValueError(
            f"{name} must have shape [B] with B={mask.shape[0]} (mask's batch size), "
            f"got {tuple(tensor.shape)}"
        )


def _check_discount(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _groups(scores: Tensor, group_size: int) -> Tensor:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [B], got {tuple(scores.shape)}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {scores.shape[0]} is not a multiple of group_size={group_size}"
        )
    return _float(scores).view(-1, group_size)


def token_level_rewards(
    scores: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Rewards ``[B, T]``: score ``[B]`` on each row's last valid token, minus ``kl_coef * kl``."""
    _check_per_sequence("scores", scores, mask)
    if kl is not None:
        _check_mask("kl", kl, mask)
    scores = _float(scores)
    m = mask.bool()
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if m.shape[-1] == 0:
        return torch.zeros(m.shape, dtype=scores.dtype, device=scores.device)
    positions = torch.arange(m.shape[-1], device=m.device)
    # Rows without a valid token get last = -1 and so match no position.
    last = torch.where(m, positions, -1).amax(dim=-1, keepdim=True)
    rewards = torch.where(positions == last, scores.unsqueeze(-1), zero)
    if kl is not None:
        rewards = rewards - kl_coef * _float(kl).to(rewards.dtype)
    keep = m & torch.isfinite(scores).unsqueeze(-1)
    return torch.where(keep, rewards, zero)


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns (``advantages + values``), both ``[B, T]``, 0 off-mask."""
    _check_mask("token_rewards", token_rewards, mask)
    _check_mask("values", values, mask)
    _check_discount("gamma", gamma)
    _check_discount("lam", lam)
    m = mask.bool()
    rewards = _float(token_rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    rewards = torch.where(m, rewards, zero)
    # Value of the state after the last valid token is 0: the response has terminated there.
    vals = torch.where(m, _float(values).to(rewards.dtype), zero)
    valid = m.to(rewards.dtype)

    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])
    next_adv = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[:, t] + gamma * next_value - vals[:, t]
        next_adv = (delta + gamma * lam * next_adv) * valid[:, t]
        advantages[:, t] = next_adv
        next_value = vals[:, t]
    returns = torch.where(m, advantages + vals, zero)
    return advantages, returns


def grpo(scores: Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages ``[B]``: (score - group mean) / (group std + eps).

    Consecutive rows form a group. The std is the population std (``unbiased=False``), which
    stays defined for a group with 2 finite scores and matches what the group actually is
    rather than an estimate of a wider population. NaN scores are left out of the statistics
    and get 0, as does every row of a group with fewer than 2 finite scores.
    """
    grouped = _groups(scores, group_size)
    finite = torch.isfinite(grouped)
    count = finite.sum(dim=-1, keepdim=True)
    zero = torch.zeros((), dtype=grouped.dtype, device=grouped.device)
    clean = torch.where(finite, grouped, zero)
    denom = count.clamp_min(1).to(grouped.dtype)
    mean = clean.sum(dim=-1, keepdim=True) / denom
    centered = torch.where(finite, clean - mean, zero)
    adv = centered
    if scale_std:
        std = torch.sqrt((centered**2).sum(dim=-1, keepdim=True) / denom)
        adv = centered / (std + eps)
    return torch.where(finite & (count >= 2), adv, zero).view(-1)


def rloo(scores: Tensor, group_size: int) -> Tensor:
    """Leave-one-out advantages ``[B]``: score minus the mean of the other finite group scores."""
    grouped = _groups(scores, group_size)
    finite = torch.isfinite(grouped)
    count = finite.sum(dim=-1, keepdim=True)
    zero = torch.zeros((), dtype=grouped.dtype, device=grouped.device)
    clean = torch.where(finite, grouped, zero)
    others = (clean.sum(dim=-1, keepdim=True) - clean) / (count - 1).clamp_min(1).to(clean.dtype)
    return torch.where(finite & (count >= 2), clean - others, zero).view(-1)


def reinforce_pp(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """REINFORCE++ advantages ``[B, T]``: discounted reward-to-go, whitened over the batch."""
    _check_mask("token_rewards", token_rewards, mask)
    _check_discount("gamma", gamma)
    m = mask.bool()
    rewards = _float(token_rewards)
    rewards = torch.where(m, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return masked_whiten(returns, m)


def broadcast(seq_adv: Tensor, mask: Tensor) -> Tensor:
    """Per-token advantages ``[B, T]``: each row's ``seq_adv [B]`` on its valid tokens, else 0."""
    _check_per_sequence("seq_adv", seq_adv, mask)
    seq_adv = _float(seq_adv)
    m = mask.bool()
    return torch.where(
        m, seq_adv.unsqueeze(-1), torch.zeros((), dtype=seq_adv.dtype, device=seq_adv.device)
    )


# Multi-turn ---------------------------------------------------------------------------------
#
# A multi-turn response is one token sequence in which assistant turns alternate with tokens
# the environment appended (user messages, tool output). ``mask`` is 1 on assistant tokens only,
# so it is no longer contiguous; ``turn_ends[i]`` lists the index of each assistant turn's last
# token in row ``i``. Env tokens are not actions: the recursions below skip them, as if each row
# held only its assistant tokens, and the discount ``gamma`` applies between turns, not between
# tokens (a turn is one step of the dialogue).


def turn_discounts(mask: Tensor, turn_ends: list[list[int]], gamma: float) -> Tensor:
    """Per-token discount ``[B, T]`` into the next assistant token: ``gamma`` at each turn's
    last token (the next state comes after the environment's reply), 1 elsewhere."""
    _check_discount("gamma", gamma)
    discounts = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    for i, ends in enumerate(turn_ends):
        for end in ends:
            discounts[i, end] = gamma
    return discounts


def turn_token_rewards(
    turn_rewards: list[list[float]],
    conversation_rewards: Tensor,
    turn_ends: list[list[int]],
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
) -> Tensor:
    """Rewards ``[B, T]``: turn ``k``'s reward on its last token, the conversation reward added
    on the last turn's last token, minus ``kl_coef * kl`` on assistant tokens; 0 elsewhere.
    A NaN conversation reward (unscorable conversation) zeroes its row."""
    _check_per_sequence("conversation_rewards", conversation_rewards, mask)
    if kl is not None:
        _check_mask("kl", kl, mask)
    final = _float(conversation_rewards)
    rewards = torch.zeros(mask.shape, dtype=final.dtype, device=final.device)
    for i, (row, ends) in enumerate(zip(turn_rewards, turn_ends)):
        if len(row) != len(ends):
            raise ValueError(f"sample {i}: {len(row)} turn rewards for {len(ends)} turns")
        for reward, end in zip(row, ends):
            rewards[i, end] += float(reward)
        if ends and bool(torch.isfinite(final[i])):
            rewards[i, ends[-1]] += final[i]
    if kl is not None:
        rewards = rewards - kl_coef * _float(kl).to(rewards.dtype)
    keep = mask.bool() & torch.isfinite(final).unsqueeze(-1)
    return torch.where(keep, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))


def masked_gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, discounts: Tensor, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE over the masked tokens of each row, skipping the others.

    With ``t`` and ``t'`` consecutive masked tokens and ``g_t = discounts[t]``:
    ``delta_t = r_t + g_t V_t' - V_t`` and ``A_t = delta_t + g_t lam A_t'``; after a row's last
    masked token ``V = A = 0``. Returns ``A`` and ``A + V``, both 0 off-mask. With a contiguous
    mask and a constant discount this is :func:`gae`.
    """
    _check_mask("token_rewards", token_rewards, mask)
    _check_mask("values", values, mask)
    _check_mask("discounts", discounts, mask)
    _check_discount("lam", lam)
    m = mask.bool()
    rewards = _float(token_rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    rewards = torch.where(m, rewards, zero)
    vals = torch.where(m, _float(values).to(rewards.dtype), zero)
    g = _float(discounts).to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])
    next_adv = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[:, t] + g[:, t] * next_value - vals[:, t]
        adv_t = delta + g[:, t] * lam * next_adv
        here = m[:, t]
        advantages[:, t] = torch.where(here, adv_t, zero)
        next_adv = torch.where(here, adv_t, next_adv)
        next_value = torch.where(here, vals[:, t], next_value)
    return advantages, torch.where(m, advantages + vals, zero)


def masked_reinforce_pp(token_rewards: Tensor, mask: Tensor, discounts: Tensor) -> Tensor:
    """REINFORCE++ over masked tokens: ``G_t = r_t + g_t G_t'`` (``t'`` the next masked token,
    ``g_t = discounts[t]``), whitened over all masked tokens of the batch; 0 off-mask."""
    _check_mask("token_rewards", token_rewards, mask)
    _check_mask("discounts", discounts, mask)
    m = mask.bool()
    rewards = _float(token_rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    rewards = torch.where(m, rewards, zero)
    g = _float(discounts).to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[-1])):
        running = torch.where(m[:, t], rewards[:, t] + g[:, t] * running, running)
        returns[:, t] = running
    return masked_whiten(returns, m)


def turn_returns(turn_rewards: list[list[float]], conversation_rewards: Tensor, gamma: float) -> Tensor:
    """Discounted return from each assistant turn, ``[B, K]`` (``K`` the most turns; NaN past a
    row's last turn and on unscorable rows): ``G_k = r_k + gamma G_{k+1}``, and the last turn's
    ``G`` is its reward plus the conversation reward."""
    _check_discount("gamma", gamma)
    final = _float(conversation_rewards)
    if final.dim() != 1 or final.shape[0] != len(turn_rewards):
        raise ValueError(
            f"conversation_rewards must have shape [{len(turn_rewards)}], got {tuple(final.shape)}"
        )
    width = max([len(r) for r in turn_rewards], default=0)
    out = torch.full((len(turn_rewards), width), float("nan"), dtype=final.dtype)
    for i, row in enumerate(turn_rewards):
        if not row or not bool(torch.isfinite(final[i])):
            continue
        running = float(final[i])
        for k in reversed(range(len(row))):
            running = float(row[k]) + (running if k == len(row) - 1 else gamma * running)
            out[i, k] = running
    return out


def turn_baseline(returns: Tensor, group_size: int, estimator: str, scale_std: bool = True) -> Tensor:
    """Per-turn advantages ``[B, K]`` from :func:`turn_returns`: at each turn index ``k`` the
    group's returns from that turn are compared with each other (``grpo``: minus their mean,
    over their std when ``scale_std``; ``rloo``: minus the mean of the others). Only rows that
    reached turn ``k`` take part; turn 0 starts from the group's shared opening, so there this
    is GRPO / RLOO on the whole conversation's return. NaN entries get 0."""
    if returns.dim() != 2:
        raise ValueError(f"returns must have shape [B, K], got {tuple(returns.shape)}")
    columns = []
    for k in range(returns.shape[1]):
        if estimator == "grpo":
            columns.append(grpo(returns[:, k], group_size, scale_std=scale_std))
        elif estimator == "rloo":
            columns.append(rloo(returns[:, k], group_size))
        else:
            raise ValueError(f"turn_baseline: estimator must be 'grpo' or 'rloo', got {estimator!r}")
    if not columns:
        return returns.new_zeros(returns.shape)
    return torch.stack(columns, dim=1)


def broadcast_turns(turn_adv: Tensor, turn_ends: list[list[int]], mask: Tensor) -> Tensor:
    """Per-token advantages ``[B, T]``: every masked token of turn ``k`` (after turn ``k-1``'s
    last token, up to and including turn ``k``'s) gets ``turn_adv[b, k]``; 0 elsewhere."""
    if turn_adv.dim() != 2 or turn_adv.shape[0] != mask.shape[0]:
        raise ValueError(f"turn_adv must have shape [B={mask.shape[0]}, K], got {tuple(turn_adv.shape)}")
    adv = _float(turn_adv)
    out = torch.zeros(mask.shape, dtype=adv.dtype, device=adv.device)
    for i, ends in enumerate(turn_ends):
        start = 0
        for k, end in enumerate(ends):
            out[i, start : end + 1] = adv[i, k]
            start = end + 1
    return torch.where(mask.bool(), out, torch.zeros((), dtype=out.dtype, device=out.device))
