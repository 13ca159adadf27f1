"""Per-token log-probabilities of a causal LM without the logits of the whole batch.

A step's largest tensor is the float32 logits ``[tokens, vocab]``: at 8,192 tokens and Qwen3's
151,669-token vocabulary that is 5 GB, and autograd keeps it for the backward pass. Here the
model runs with its head on one position only (``logits_to_keep=1``), the decoder's final hidden
states are taken from its output, and the head is applied ``chunk`` tokens at a time. Each chunk
is checkpointed: its logits are dropped after the forward and recomputed in the backward, so
peak memory holds one chunk's logits whatever the vocabulary.

Under FSDP2 the head's weight is a parameter of the root unit, which stays unsharded from its
forward until its backward, so the chunks use the same full weight the model's own head would,
and its gradient reaches the same reduce-scatter.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Config keys of heads that are more than a linear layer and a softcap: logits scaled after the
# head (Cohere's logit_scale, Granite's logits_scaling) fall back to full logits.
_OTHER_HEAD_KEYS = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def chunking_unsupported(model) -> Optional[str]:
    """Why ``model``'s head cannot be applied in chunks here (``None``: it can)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"its output head is a {type(head).__name__}, not a linear layer"
    if not hasattr(model, "get_decoder"):
        return "it has no get_decoder() to take the final hidden states from"
    extra = [k for k in _OTHER_HEAD_KEYS if getattr(model.config, k, None) not in (None, 1, 1.0)]
    if extra:
        return f"its config scales the logits ({', '.join(extra)})"
    return None


def final_hidden(model, **inputs):
    """``(hidden [b, T, H], outputs)``: the decoder's final (normed) hidden states of a forward
    whose head runs on the last position only."""
    captured = {}

    def keep(module, args, output):
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        outputs = model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured["hidden"], outputs


def _chunk_stats(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], labels: Tensor, temperature: float,
                 softcap: Optional[float], entropy: bool, hits: bool) -> Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    labels = labels.long()
    out = [logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse]
    if entropy:
        out.append(lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1))
    if hits:
        out.append((logits.detach().argmax(-1) == labels).float())
    return torch.stack(out, dim=-1)


class HeadStats(NamedTuple):
    logprobs: Tensor
    """Log-probabilities of the labels (float32)."""
    entropy: Optional[Tensor]
    """Entropy of each position's distribution, when asked."""
    hits: Optional[Tensor]
    """1.0 where the most likely token is the label (no gradient), when asked."""


def token_logprobs(model, hidden: Tensor, labels: Tensor, chunk: int, temperature: float = 1.0,
                   entropy: bool = False, hits: bool = False) -> HeadStats:
    """Log-probabilities ``[..]`` of ``labels [..]`` given the final hidden states ``hidden [.., H]``
    at the same positions, and their entropy and argmax hits when asked, ``chunk`` tokens at a
    time through ``model``'s output head (after its softcap, if any, then ``temperature``)."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1)
    track = torch.is_grad_enabled() and (flat_h.requires_grad or head.weight.requires_grad)
    parts = []
    for start in range(0, flat_h.shape[0], chunk):
        args = (flat_h[start : start + chunk], head.weight, head.bias, flat_y[start : start + chunk],
                temperature, softcap, entropy, hits)
        # Checkpointed: the chunk's logits are recomputed in the backward instead of kept.
        parts.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if track else _chunk_stats(*args))
    width = 1 + entropy + hits
    stats = torch.cat(parts) if parts else flat_h.new_zeros((0, width), dtype=torch.float32)
    columns = iter(stats.unbind(-1))
    logprobs = next(columns).reshape(labels.shape)
    ent = next(columns).reshape(labels.shape) if entropy else None
    hit = next(columns).detach().reshape(labels.shape) if hits else None
    return HeadStats(logprobs, ent, hit)
