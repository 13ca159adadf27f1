"""Checks of the file system and the model that run before Ray or any model starts.

The config's own rules (types, ranges, cross-field) are :mod:`pipeline.config.checks`; these
need to look at disk: a model directory whose ``config.json`` does not parse, a context too
short for the tokens a run asks for, an output directory that is in fact a file. Each raises
``ValueError`` naming the config field, so a run fails in a second instead of minutes in, with
nothing saved lost.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from learners.models import model_dir_error
from pipeline.config import RayppoConfig

# config.json keys that hold a model's context length, by model family.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_config(path: str, field: str) -> Optional[dict]:
    """The parsed ``config.json`` of the model directory ``path`` (``None`` for a hub id,
    checked when it downloads); ``ValueError`` naming ``field`` when it cannot be a model."""
    if os.path.isfile(path):
        raise ValueError(f"{field}: {path!r} is a file, not a model directory")
    problem = model_dir_error(path)
    if problem:
        raise ValueError(f"{field}: {problem}")
    if not os.path.isdir(path):
        return None
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{field}: cannot read {config_path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{field}: {config_path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{field}: {config_path} must hold a JSON object, got {type(config).__name__}")
    if "model_type" not in config:
        raise ValueError(f"{field}: {config_path} has no 'model_type': not a transformers model config")
    return config


def load_tokenizer(path: str, field: str, trust_remote_code: bool = False):
    """The tokenizer of ``path``; a broken one is a ``ValueError`` naming ``field``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{field}: cannot load the tokenizer of {path!r}: {detail}") from None
    except Exception as exc:  # tokenizers' Rust errors (a corrupt tokenizer.json) are their own type
        raise ValueError(f"{field}: cannot load the tokenizer of {path!r}: {type(exc).__name__}: {exc}") from None


def context_length(config: dict) -> Optional[int]:
    """The model's context in tokens, if its config states one."""
    for section in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_context(cfg: RayppoConfig, config: Optional[dict]) -> None:
    """A prompt plus the most tokens the run generates must fit the policy's context (the
    engines would refuse to start, minutes in)."""
    from rollout_workers.group import engine_kwargs

    context = context_length(config or {})
    if context is None:
        return
    needed = engine_kwargs(cfg)["max_model_len"]
    if needed <= context:
        return
    prompt = cfg.data.max_prompt_tokens
    response_field, response = "rollout.max_tokens", cfg.rollout.max_tokens
    env = getattr(cfg, "env", None)
    if getattr(env, "class_path", None) and env.max_tokens_per_conversation > response:
        # A multi-turn response holds every later turn, the environment's included.
        response_field, response = "env.max_tokens_per_conversation", env.max_tokens_per_conversation
    margin = needed - prompt - response
    raise ValueError(
        f"{response_field}: {response} generated tokens + data.max_prompt_tokens {prompt} "
        f"(+ {margin} spare) = {needed} tokens do not fit the context of model.path: "
        f"{context} tokens ({os.path.join(cfg.model.path, 'config.json')}); "
        f"at most {max(0, context - prompt - margin)} generated tokens fit"
    )


def check_output_dir(path: Optional[str], field: str) -> None:
    """``path`` is or can become a directory: no file sits there or in its way."""
    if not path:
        return
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{field}: {path} is an existing file, not a directory")
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{field}: {path} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{field}: {path} cannot be written: {ancestor} is not writable")


def check_train(cfg: RayppoConfig) -> None:
    """Everything ``rayppo train`` / ``eval`` read or write, checked before Ray starts."""
    config = model_config(cfg.model.path, "model.path")
    check_context(cfg, config)
    if cfg.algorithm.advantage == "gae" and cfg.model.critic_path:
        model_config(cfg.model.critic_path, "model.critic_path")
    check_output_dir(cfg.storage_path, "storage_path")
    check_output_dir(cfg.checkpoint.dir, "checkpoint.dir")
    check_output_dir(cfg.logging.dir, "logging.dir")
    if cfg.checkpoint.export_dir:
        check_output_dir(cfg.checkpoint.export_dir, "checkpoint.export_dir")


def check_sweep(cfg: RayppoConfig) -> None:
    """What every trial of ``rayppo sweep`` reads (each trial's outputs go under the sweep)."""
    check_context(cfg, model_config(cfg.model.path, "model.path"))
    check_output_dir(cfg.storage_path, "storage_path")


def check_sft(cfg: RayppoConfig) -> None:
    """What ``rayppo sft`` reads and writes."""
    model_config(cfg.sft.base_path, "sft.base_path")
    check_output_dir(cfg.sft.output_dir, "sft.output_dir")
    log_dir = getattr(cfg.sft, "log_dir", None)
    if log_dir:
        check_output_dir(log_dir, "sft.log_dir")
