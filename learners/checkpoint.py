"""Checkpoints: atomic step directories, HF weights, DCP optimizer shards.

Layout of one checkpoint (written as ``step_000120.tmp/`` and renamed when complete)::

    step_000120/
      policy/          HF directory (config, tokenizer, model.safetensors): loadable anywhere
      critic/          same, when the algorithm has a critic
      optimizer/       torch.distributed.checkpoint shards of the policy optimizer
      critic_optimizer/
      learner.json     scheduler state, optimizer-step and skipped-step counters
      rng_rank{r}.safetensors
      state.json       driver state: step, data position, RNG, policy version, config hash
    latest             symlink to the newest complete step directory, replaced atomically

Every file is loadable with ``weights_only=True`` semantics: tensors live in safetensors or
DCP, everything else is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

STEP_PREFIX = "step_"


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"{STEP_PREFIX}{step:06d}")


def export_hf(
    state_dict: dict[str, torch.Tensor],
    config,
    tokenizer_path: Optional[str],
    out: str,
    generation_config=None,
) -> None:
    """Write an HF directory (safetensors) from a full state dict; tied weights stored once."""
    os.makedirs(out, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    if generation_config is not None:
        generation_config.save_pretrained(out)
    if tokenizer_path:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(out)


def save_learner(
    directory: str,
    models: list[tuple],
    full_state_dict: Callable[[str], dict],
    rank: int,
    counters: dict[str, int],
    tokenizer_path: str,
) -> None:
    """Collective: every rank writes its optimizer shards; rank 0 writes the HF weights and the
    ``counters``. ``models``: ``(name, model, optimizer, scheduler, optimizer dir)`` for every
    model the learner trains; ``full_state_dict(name)``: that model's full state dict (itself
    collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    for name, model, optimizer, _, optim_dir in models:
        full = full_state_dict(name)
        if rank == 0:
            export_hf(
                full,
                model.config,
                tokenizer_path,
                os.path.join(directory, name),
                generation_config=getattr(model, "generation_config", None),
            )
        dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=os.path.join(directory, optim_dir))
    save_file({"cpu": torch.get_rng_state()}, os.path.join(directory, f"rng_rank{rank}.safetensors"))
    if rank == 0:
        learner_state = {"scheduler": {name: sched.state_dict() for name, _, _, sched, _ in models}, **counters}
        with open(os.path.join(directory, "learner.json"), "w") as f:
            json.dump(learner_state, f, default=_json_default)
    dist.barrier()


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} in learner state")


def load_learner(directory: str, models: list[tuple], rank: int, counters: tuple[str, ...]) -> dict[str, int]:
    """Collective: restore the weights, optimizer shards and schedulers of ``models`` (as
    :func:`save_learner` takes them); returns the saved ``counters``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    with open(os.path.join(directory, "learner.json")) as f:
        learner_state = json.load(f)
    for name, model, optimizer, scheduler, optim_dir in models:
        full = load_file(os.path.join(directory, name, "model.safetensors"))
        if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in full:
            embed_key = next(k for k in full if k.endswith("embed_tokens.weight"))
            full["lm_head.weight"] = full[embed_key]
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))
        state = {"optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=os.path.join(directory, optim_dir))
        set_optimizer_state_dict(model, optimizer, state["optim"])
        scheduler.load_state_dict(learner_state["scheduler"][name])
    rng_file = os.path.join(directory, f"rng_rank{rank}.safetensors")
    if os.path.exists(rng_file):
        torch.set_rng_state(load_file(rng_file)["cpu"])
    dist.barrier()
    return {name: learner_state[name] for name in counters}


# ------------------------------------------------------------------ driver side
def begin(root: str, step: int) -> str:
    """Fresh temporary directory for a checkpoint of ``step``; a stale one is discarded."""
    tmp = step_dir(root, step) + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


def commit(root: str, step: int, tmp: str, driver_state: dict, keep_last: int) -> str:
    """Write ``state.json``, rename the temp dir into place, then move ``latest``."""
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(driver_state, f, indent=1)
    final = step_dir(root, step)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    link_tmp = os.path.join(root, "latest.tmp")
    if os.path.lexists(link_tmp):
        os.remove(link_tmp)
    os.symlink(os.path.basename(final), link_tmp)
    os.replace(link_tmp, os.path.join(root, "latest"))
    _prune(root, step, keep_last)
    return final


def _step_number(name: str) -> Optional[int]:
    digits = name[len(STEP_PREFIX) :]
    return int(digits) if name.startswith(STEP_PREFIX) and digits.isdigit() else None


def _prune(root: str, newest: int, keep_last: int) -> None:
    """Keep the ``keep_last`` newest checkpoints at or before ``newest`` (just committed).

    Steps numbered after ``newest`` belong to an abandoned timeline (a run restarted from an
    earlier step); the just-committed checkpoint is never deleted.
    """
    steps = sorted(n for n in map(_step_number, os.listdir(root)) if n is not None and n <= newest)
    for old in steps[:-keep_last]:
        shutil.rmtree(step_dir(root, old), ignore_errors=True)


def latest(root: str) -> Optional[str]:
    """The checkpoint ``latest`` points at, or ``None`` when ``root`` has none yet. A
    ``latest`` that points at no complete checkpoint is an error: starting over would
    silently discard the run."""
    link = os.path.join(root, "latest")
    if not os.path.lexists(link):
        return None
    if not os.path.exists(os.path.join(link, "state.json")):
        raise ValueError(
            f"checkpoint.resume='auto': {link} points at "
            f"{os.readlink(link) if os.path.islink(link) else link!r}, which is not a complete "
            f"checkpoint (no state.json); remove the link to start over or name a checkpoint"
        )
    return os.path.realpath(link)


def resolve(root: str, resume: str) -> Optional[str]:
    """The checkpoint directory named by ``checkpoint.resume`` (``latest``, a path, or
    ``auto``: ``latest`` if there is one, else ``None``)."""
    if resume == "auto":
        return latest(root)
    path = os.path.join(root, "latest") if resume == "latest" else resume
    if not os.path.exists(os.path.join(path, "state.json")):
        raise ValueError(
            f"checkpoint.resume={resume!r}: no complete checkpoint at {path!r} "
            f"(expected {os.path.join(path, 'state.json')})"
        )
    return os.path.realpath(path)


def read_state(path: str) -> dict:
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)
