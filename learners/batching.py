"""Turning ragged (prompt, response) samples into padded micro-batches.

Invariant: logprobs, values and advantages are per *response* token; prompt tokens never
carry loss. A response token at sequence position ``p + t`` is predicted by the logits at
position ``p + t - 1`` (``p`` = prompt length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Samples:
    """A rank's share of a rollout batch: one entry per sample, same order everywhere."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    extras: dict[str, list[np.ndarray]]
    """Per-response-token float arrays (old_logprobs, advantages, returns, ...)."""

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, index: list[int]) -> "Samples":
        return Samples(
            [self.prompt_ids[i] for i in index],
            [self.response_ids[i] for i in index],
            {k: [v[i] for i in index] for k, v in self.extras.items()},
        )


def split_evenly(n: int, parts: int) -> list[list[int]]:
    """Contiguous index ranges of near-equal size (the first ``n % parts`` get one more)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def pack_by_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Group consecutive samples so each group's padded size (count x longest) fits ``budget``.

    A single sample longer than the budget still gets a group of its own.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        new_longest = max(longest, length)
        if current and new_longest * (len(current) + 1) > budget:
            groups.append(current)
            current, new_longest = [], length
        current.append(i)
        longest = new_longest
    if current:
        groups.append(current)
    return groups


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [b, L]
    attention_mask: torch.Tensor  # [b, L]
    positions: torch.Tensor  # [b, R] logits positions predicting each response token
    response_ids: torch.Tensor  # [b, R]
    response_mask: torch.Tensor  # [b, R] float
    extras: dict[str, torch.Tensor]  # [b, R] each


def collate(samples: Samples, pad_id: int, device: torch.device) -> MicroBatch:
    seqs = [p + r for p, r in zip(samples.prompt_ids, samples.response_ids)]
    longest = max(len(s) for s in seqs)
    resp_longest = max(1, max(len(r) for r in samples.response_ids))
    b = len(seqs)
    input_ids = torch.full((b, longest), pad_id, dtype=torch.long)
    attention = torch.zeros((b, longest), dtype=torch.long)
    positions = torch.zeros((b, resp_longest), dtype=torch.long)
    response_ids = torch.full((b, resp_longest), pad_id, dtype=torch.long)
    response_mask = torch.zeros((b, resp_longest), dtype=torch.float32)
    extras = {k: torch.zeros((b, resp_longest), dtype=torch.float32) for k in samples.extras}
    for i, (prompt, response) in enumerate(zip(samples.prompt_ids, samples.response_ids)):
        seq = prompt + response
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        r = len(response)
        positions[i] = len(prompt) - 1 + torch.arange(resp_longest).clamp(max=max(r - 1, 0))
        if r:
            response_ids[i, :r] = torch.tensor(response, dtype=torch.long)
            response_mask[i, :r] = 1.0
        for k, values in samples.extras.items():
            extras[k][i, :r] = torch.tensor(np.asarray(values[i][:r], dtype=np.float32))
    return MicroBatch(
        input_ids.to(device),
        attention.to(device),
        positions.to(device),
        response_ids.to(device),
        response_mask.to(device),
        {k: v.to(device) for k, v in extras.items()},
    )


def at_positions(per_position: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Select ``per_position[b, positions[b, t], ...]`` -> ``[b, R, ...]``."""
    index = positions
    for _ in range(per_position.dim() - 2):
        index = index.unsqueeze(-1)
    index = index.expand(*positions.shape, *per_position.shape[2:])
    return per_position.gather(1, index)


def unpad(values: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    """``[b, R]`` padded tensor -> one float32 array per sample, response length long."""
    lengths = mask.sum(-1).long().tolist()
    values = values.detach().float().cpu().numpy()
    return [values[i, :n].copy() for i, n in enumerate(lengths)]
