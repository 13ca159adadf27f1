"""Loading HF models and sharding them with FSDP2.

Models are always loaded through ``from_pretrained`` on a local directory or hub id, so a
locally built model and a real one take the same path.
"""

from __future__ import annotations

import os

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def resolve_dtype(name: str, on_gpu: bool) -> torch.dtype:
    """Parameter dtype for a config's ``model.dtype`` (``auto``: fp32 master weights)."""
    if name == "bfloat16":
        return torch.bfloat16
    # ``auto`` keeps fp32 master weights everywhere; on GPU the compute runs in bf16 through
    # FSDP2's mixed-precision policy (see ``shard``), which is what makes optimizer steps exact.
    return torch.float32


def model_dir_error(path: str) -> str | None:
    """A sentence saying why ``path`` cannot be a local model directory, or None if it can."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            return f"model directory {path!r} has no config.json"
        return None
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return None
    return f"model path {path!r} does not exist (run `rayppo init-model` / `rayppo sft` first?)"


def load_policy(path: str, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code
    )
    model.config.use_cache = False
    return model


def load_critic(path: str, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
    """A value model: the policy's backbone with a scalar head per token.

    ``AutoModelForTokenClassification`` with one label is exactly that, and it saves and loads
    as a normal HF directory.
    """
    from transformers import AutoModelForTokenClassification

    critic = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code
    )
    critic.config.use_cache = False
    head = critic.score if hasattr(critic, "score") else critic.classifier
    if "TokenClassification" not in str(critic.config.architectures):
        # A freshly added head starts at zero so the first values equal the mean return (0).
        torch.nn.init.zeros_(head.weight)
        if getattr(head, "bias", None) is not None:
            torch.nn.init.zeros_(head.bias)
    return critic


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, each of which becomes one FSDP2 unit."""
    base = getattr(model, "model", None) or getattr(model, getattr(model, "base_model_prefix", ""))
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers on {type(model).__name__} to shard")
    return list(layers)


def shard(model: torch.nn.Module, on_gpu: bool, mixed_precision: bool) -> torch.nn.Module:
    """Apply FSDP2 ``fully_shard`` per decoder layer, then to the root."""
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if on_gpu and mixed_precision
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model
