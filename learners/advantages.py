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
