"""Masked reductions, KL estimators and the PPO policy/value losses.

Every per-token tensor is ``[B, T]``: a batch of right-padded response sequences, with ``mask``
(bool or 0/1 float) marking the valid response tokens. Padding positions may hold arbitrary
values (even NaN or inf); they are selected away with ``torch.where`` rather than multiplied by
the mask (``NaN * 0`` is NaN), and the losses clean their inputs before any arithmetic so padding
can't poison gradients either.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_AGG_MODES = ("token_mean", "seq_mean_token_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")

# exp() of a log-ratio beyond this overflows float32 long before it means anything.
_MAX_LOG_RATIO = 20.0


def _check_shape(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    if tensor.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
            "they must match"
        )


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is set (over ``dim`` or all); 0 where none are."""
    _check_shape("mask", mask, "x", x)
    m = mask.bool()
    picked = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        total, count = picked.sum(), m.sum()
    else:
        total, count = picked.sum(dim), m.sum(dim)
    # Dividing by at least 1 keeps an empty selection at 0 and its autograd graph intact.
    return total / count.clamp_min(1).to(total.dtype)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``x`` standardised by the masked mean and (population) std over all dims; 0 off-mask."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def aggregate(loss_tokens: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Scalar loss from per-token losses ``[B, T]``: ``token_mean`` or ``seq_mean_token_mean``."""
    if mode == "token_mean":
        return masked_mean(loss_tokens, mask)
    if mode == "seq_mean_token_mean":
        per_seq = masked_mean(loss_tokens, mask, dim=-1)
        # Sequences without a valid token would otherwise drag the mean towards 0.
        return masked_mean(per_seq, mask.bool().any(dim=-1))
    raise ValueError(f"loss_agg must be one of {LOSS_AGG_MODES}, got {mode!r}")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate ``[B, T]`` of KL(policy || ref) from sampled-token log-probs."""
    _check_shape("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        log_ratio = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    loss_agg: str,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate loss (scalar) with asymmetric clip range, plus float stats."""
    _check_shape("old_logprobs", old_logprobs, "logprobs", logprobs)
    _check_shape("advantages", advantages, "logprobs", logprobs)
    _check_shape("mask", mask, "logprobs", logprobs)
    if not 0.0 <= clip_low <= 1.0:
        raise ValueError(f"clip_low must be in [0, 1], got {clip_low}")
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    m = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Zeroing padding before exp() keeps an inf ratio there from turning gradients into NaN.
    log_ratio = torch.where(m, logprobs - old_logprobs, zero)
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    adv = torch.where(m, advantages, zero)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(torch.maximum(unclipped, clipped), m, loss_agg)

    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), m).item(),
            "approx_kl": masked_mean(0.5 * log_ratio.float() ** 2, m).item(),
            "ratio_mean": masked_mean(ratio.float(), m).item(),
            "ratio_max": ratio[m].max().item() if m.any() else 0.0,
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float,
    loss_agg: str,
) -> tuple[Tensor, dict[str, float]]:
    """PPO2-style clipped value loss (scalar) around ``old_values``, plus float stats."""
    _check_shape("old_values", old_values, "values", values)
    _check_shape("returns", returns, "values", values)
    _check_shape("mask", mask, "values", values)
    if clip < 0.0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    m = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(m, values, zero)
    old_values = torch.where(m, old_values, zero)
    returns = torch.where(m, returns, zero)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = aggregate(0.5 * torch.maximum(unclipped, clipped), m, loss_agg)

    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean((clipped > unclipped).float(), m).item(),
            "value_mean": masked_mean(values.float(), m).item(),
        }
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``[B, T]`` of the softmax over the last dim of ``logits [B, T, V]``."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-prob ``[B, T]`` (float32 or wider) of ``labels [B, T]`` under ``logits [B, T, V]``."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but logits has shape "
            f"{tuple(logits.shape)}; labels must equal logits.shape[:-1]"
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    index = labels.long().unsqueeze(-1)
    if logits.dtype == dtype:
        return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    # Upcasting one sequence at a time bounds the float32 copy to [T, V] instead of [B, T, V].
    rows = [
        row.gather(-1, idx).squeeze(-1).to(dtype) - torch.logsumexp(row.to(dtype), dim=-1)
        for row, idx in zip(logits, index)
    ]
    if not rows:
        return logits.new_zeros(labels.shape, dtype=dtype)
    return torch.stack(rows)
