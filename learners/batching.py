"""Turning ragged (prompt, response) samples into padded micro-batches.

Invariant: logprobs, values and advantages are per *response* token; prompt tokens never
carry loss. A response token at sequence position ``p + t`` is predicted by the logits at
position ``p + t - 1`` (``p`` = prompt length). In a multi-turn response the tokens the
environment appended carry no loss either: ``loss_mask`` is 0 there, and every loss, KL,
entropy and value term counts only where it is 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class Samples:
    """A rank's share of a rollout batch: one entry per sample, same order everywhere."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    extras: dict[str, list[np.ndarray]]
    """Per-response-token float arrays (old_logprobs, advantages, returns, ...)."""
    loss_masks: Optional[list] = None
    """Per-response-token 0/1 (multi-turn: 0 on environment tokens); ``None``: all ones."""

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, index: list[int]) -> "Samples":
        return Samples(
            [self.prompt_ids[i] for i in index],
            [self.response_ids[i] for i in index],
            {k: [v[i] for i in index] for k, v in self.extras.items()},
            None if self.loss_masks is None else [self.loss_masks[i] for i in index],
        )

    def loss_tokens(self) -> int:
        """Response tokens that carry loss."""
        if self.loss_masks is None:
            return sum(len(r) for r in self.response_ids)
        return int(sum(np.count_nonzero(m) for m in self.loss_masks))

    def loss_sequences(self) -> int:
        """Samples with at least one token that carries loss."""
        if self.loss_masks is None:
            return sum(1 for r in self.response_ids if len(r))
        return sum(1 for m in self.loss_masks if np.count_nonzero(m))


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
class SharedPrompts:
    """The same micro-batch laid out for a prompt-once forward: each distinct prompt runs once,
    and its keys/values are repeated for every sample that continues it.

    Samples of one group (GRPO, RLOO, ...) share their prompt, so the plain layout computes it
    ``n`` times. Here the prompt pass sees ``u`` distinct prompts (right-padded to ``P``); the
    response pass attends to their cached keys/values through ``attention_mask``, whose prompt
    part has zeros at each prompt's padding, and carries explicit ``position_ids`` so every
    response token keeps the position it has right after its own prompt.
    """

    prompt_ids: torch.Tensor  # [u, P]
    prompt_mask: torch.Tensor  # [u, P]
    prompt_last: torch.Tensor  # [u] index of each prompt's last token
    owner: torch.Tensor  # [b] index of each sample's prompt
    response_inputs: torch.Tensor  # [b, max(R - 1, 1)] response tokens fed to the model
    position_ids: torch.Tensor  # [b, max(R - 1, 1)]
    attention_mask: torch.Tensor  # [b, P + max(R - 1, 1)]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [b, L]
    attention_mask: torch.Tensor  # [b, L]
    positions: torch.Tensor  # [b, R] logits positions predicting each response token
    response_ids: torch.Tensor  # [b, R]
    response_mask: torch.Tensor  # [b, R] float: 1 on every response token
    extras: dict[str, torch.Tensor]  # [b, R] each
    shared: Optional[SharedPrompts] = None
    """The prompt-once layout, when asked for (``collate(..., share=True)``)."""
    loss_mask: Optional[torch.Tensor] = None
    """``[b, R]`` float, 1 on the response tokens that carry loss (the policy's own); 0 on
    padding and on environment tokens. Equals ``response_mask`` for single-turn samples."""

    def __post_init__(self):
        if self.loss_mask is None:
            self.loss_mask = self.response_mask


def share_prompts(samples: Samples, response_ids: torch.Tensor, pad_id: int) -> SharedPrompts:
    """The :class:`SharedPrompts` layout of ``samples`` (``response_ids``: their ``[b, R]``)."""
    index: dict[tuple[int, ...], int] = {}
    owner = [index.setdefault(tuple(p), len(index)) for p in samples.prompt_ids]
    prompts = [list(p) for p in index]
    longest = max(1, max(len(p) for p in prompts))
    u = len(prompts)
    prompt_ids = torch.full((u, longest), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((u, longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, : len(p)] = 1
    prompt_len = prompt_mask.sum(-1)
    owner_t = torch.tensor(owner, dtype=torch.long)
    # Response token t is predicted at response input t - 1 (token 0 at the prompt's last
    # token), so the last response token is never an input; one column stays for R = 1.
    width = max(response_ids.shape[1] - 1, 1)
    lengths = torch.tensor([len(r) for r in samples.response_ids], dtype=torch.long)
    columns = torch.arange(width)
    response_mask = (columns[None, :] < lengths[:, None]).long()
    return SharedPrompts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        prompt_last=(prompt_len - 1).clamp(min=0),
        owner=owner_t,
        response_inputs=response_ids[:, :width],
        position_ids=prompt_len[owner_t][:, None] + columns[None, :],
        attention_mask=torch.cat([prompt_mask[owner_t], response_mask], dim=1),
    )


def collate(samples: Samples, pad_id: int, device: torch.device, share: bool = False) -> MicroBatch:
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
    loss_mask = None if samples.loss_masks is None else torch.zeros((b, resp_longest), dtype=torch.float32)
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
        if loss_mask is not None:
            row = np.asarray(samples.loss_masks[i], dtype=np.float32)
            if len(row) != r:
                raise ValueError(f"sample {i}: loss mask has {len(row)} entries for {r} response tokens")
            loss_mask[i, :r] = torch.from_numpy(row)
    shared = None
    if share:
        layout = share_prompts(samples, response_ids, pad_id)
        shared = SharedPrompts(**{k: v.to(device) for k, v in vars(layout).items()})
    return MicroBatch(
        input_ids.to(device),
        attention.to(device),
        positions.to(device),
        response_ids.to(device),
        response_mask.to(device),
        {k: v.to(device) for k, v in extras.items()},
        shared,
        None if loss_mask is None else loss_mask.to(device),
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
