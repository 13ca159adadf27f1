"""Validation of a :class:`pipeline.config.RayppoConfig`: types, ranges, enums, cross-field rules.

:meth:`RayppoConfig.validate` delegates to :func:`_validate` here; the config classes, their
per-field documentation and the YAML loading / saving live in :mod:`pipeline.config`.

* Type coercion (:func:`_coerce`) checks a value against a field's annotation and normalises
  it (an ``int`` given for a ``float`` field becomes a float, ``"1e-5"`` a float). The loader
  applies it key by key; :func:`_normalise_types` applies it to a whole config built in Python.
* :func:`_validate` then checks allowed values (``_ENUMS``), numeric bounds (``_BOUNDS``) and
  the rules that span fields, and raises one ``ValueError`` naming every offending field.

This module does not import :mod:`pipeline.config` at import time (that module imports the
coercion helpers from here); :func:`_validate` imports :class:`RayppoConfig` when it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from typing import TYPE_CHECKING, Any

from pipeline.envs.config import env_errors

if TYPE_CHECKING:
    from pipeline.config import RayppoConfig


# ---------------------------------------------------------------------------------------------
# Types: the config dataclasses' annotations and coercion of values to them

_NONE_TYPE = type(None)
_FAIL = object()


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    # The annotations are strings (``from __future__ import annotations``); resolve them once.
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in names}


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _optional_inner(hint: Any) -> Any | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not _NONE_TYPE]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _describe(hint: Any) -> str:
    inner = _optional_inner(hint)
    if inner is not None:
        return f"{_describe(inner)} or null"
    if typing.get_origin(hint) is list:
        return f"list of {_describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is dict:
        key, val = typing.get_args(hint)
        return f"mapping of {_describe(key)} to {_describe(val)}"
    if hint is Any:
        return "any value"
    return getattr(hint, "__name__", str(hint))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _try_coerce(value: Any, hint: Any) -> Any:
    inner = _optional_inner(hint)
    if inner is not None:
        return None if value is None else _try_coerce(value, inner)
    if hint is bool:
        return value if isinstance(value, bool) else _FAIL
    if hint is int:
        if isinstance(value, bool):
            return _FAIL
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _FAIL
    if hint is float:
        if isinstance(value, bool):
            return _FAIL
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads ``1e-5`` (no dot) as a string.
            try:
                return float(value.strip())
            except ValueError:
                return _FAIL
        return _FAIL
    if hint is str:
        return value if isinstance(value, str) else _FAIL
    if typing.get_origin(hint) is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            return _FAIL
        items = [_try_coerce(v, item_hint) for v in value]
        return _FAIL if any(v is _FAIL for v in items) else items
    if typing.get_origin(hint) is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            return _FAIL
        pairs = [(_try_coerce(k, key_hint), _try_coerce(v, value_hint)) for k, v in value.items()]
        return _FAIL if any(k is _FAIL or v is _FAIL for k, v in pairs) else dict(pairs)
    if hint is Any:
        return value
    raise TypeError(f"unsupported config annotation {hint!r}")


def _coerce(value: Any, hint: Any, name: str) -> Any:
    out = _try_coerce(value, hint)
    if out is _FAIL:
        raise ValueError(f"{name}: expected {_describe(hint)}, got {_short(value)}")
    return out


def _normalise_types(obj: Any, cls: type, prefix: str) -> None:
    if not isinstance(obj, cls):
        raise ValueError(f"{prefix}: expected a {cls.__name__}, got {_short(obj)}")
    for name, hint in _hints(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        value = getattr(obj, name)
        if _is_section(hint):
            _normalise_types(value, hint, dotted)
        else:
            setattr(obj, name, _coerce(value, hint, dotted))


# ---------------------------------------------------------------------------------------------
# Ranges, enums and cross-field rules

_ENUMS: dict[str, tuple] = {
    "init.architecture": ("qwen2", "llama"),
    "init.preset": ("tiny", "debug", "small", "0.5b"),
    "model.dtype": ("auto", "float32", "bfloat16"),
    "data.task": (None, "arithmetic", "countdown", "support", "memory"),
    "rollout.engine": ("vllm", "hf"),
    "algorithm.advantage": ("gae", "grpo", "rloo", "reinforce_pp"),
    "algorithm.kl_mode": ("loss", "reward"),
    "algorithm.kl_estimator": ("k1", "k2", "k3"),
    "algorithm.loss_agg": ("token_mean", "seq_mean_token_mean"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "resources.placement": ("colocated", "disaggregated"),
    "tune.mode": ("max", "min"),
    "tune.scheduler": ("fifo", "asha", "pbt"),
}

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

# (field, op, bound); ``None`` values (optional fields) are skipped.
_BOUNDS: list[tuple[str, str, float]] = [
    ("total_steps", ">=", 1),
    ("prompts_per_step", ">=", 1),
    ("eval_every", ">=", 0),
    ("logging.sample_every", ">=", 0),
    ("logging.sample_prompts", ">=", 1),
    ("init.vocab_size", ">=", 1),
    ("init.corpus_size", ">=", 1),
    ("data.num_train", ">=", 1),
    ("data.num_eval", ">=", 1),
    ("data.min_digits", ">=", 1),
    ("data.max_digits", ">=", 1),
    ("data.max_prompt_tokens", ">=", 1),
    ("sft.num_workers", ">=", 1),
    ("sft.steps", ">=", 1),
    ("sft.batch_size", ">=", 1),
    ("sft.lr", ">", 0),
    ("sft.warmup_steps", ">=", 0),
    ("sft.num_examples", ">=", 1),
    ("sft.max_length", ">=", 2),
    ("sft.eval_every", ">=", 0),
    ("sft.adam_beta2", ">", 0),
    ("sft.adam_beta2", "<", 1),
    ("rollout.num_workers", ">=", 1),
    ("rollout.n_samples", ">=", 1),
    ("rollout.temperature", ">", 0),
    ("rollout.top_p", ">", 0),
    ("rollout.top_p", "<=", 1),
    ("rollout.max_tokens", ">=", 1),
    ("rollout.tensor_parallel_size", ">=", 1),
    ("rollout.gpu_memory_utilization", ">", 0),
    ("rollout.gpu_memory_utilization", "<=", 1),
    ("rollout.kv_cache_gib", ">", 0),
    ("rollout.probe_tolerance", ">", 0),
    ("rollout.probe_size", ">=", 1),
    ("rollout.verify_every", ">=", 1),
    ("rollout.torch_threads", ">=", 0),
    ("learner.num_ranks", ">=", 1),
    ("learner.lr", ">", 0),
    ("learner.critic_lr", ">", 0),
    ("learner.weight_decay", ">=", 0),
    ("learner.adam_eps", ">", 0),
    ("learner.warmup_steps", ">=", 0),
    ("learner.max_grad_norm", ">", 0),
    ("learner.ppo_epochs", ">=", 1),
    ("learner.mini_batches", ">=", 1),
    ("learner.micro_batch_tokens", ">=", 1),
    ("algorithm.gamma", ">=", 0),
    ("algorithm.gamma", "<=", 1),
    ("algorithm.lam", ">=", 0),
    ("algorithm.lam", "<=", 1),
    ("algorithm.clip_low", ">=", 0),
    ("algorithm.clip_low", "<", 1),
    ("algorithm.clip_high", ">", 0),
    ("algorithm.value_clip", ">", 0),
    ("algorithm.vf_coef", ">=", 0),
    ("algorithm.kl_coef", ">=", 0),
    ("algorithm.entropy_coef", ">=", 0),
    ("checkpoint.every_steps", ">=", 0),
    ("checkpoint.keep_last", ">=", 1),
    ("resources.cpus_per_learner", ">=", 0),
    ("resources.gpus_per_learner", ">=", 0),
    ("resources.cpus_per_rollout_worker", ">=", 0),
    ("resources.gpus_per_rollout_worker", ">=", 0),
    ("resources.local_num_cpus", ">=", 1),
    ("resources.torch_threads", ">=", 1),
    ("resources.learner_ranks_per_node", ">=", 1),
    ("resources.placement_timeout_s", ">", 0),
    ("resources.max_engine_restarts", ">=", -1),
    ("resources.max_failures", ">=", -1),
    ("resources.engine_timeout_s", ">", 0),
    ("resources.learner_timeout_s", ">", 0),
    ("tune.num_samples", ">=", 1),
    ("tune.max_concurrent_trials", ">=", 1),
    ("tune.grace_period", ">=", 1),
    ("tune.reduction_factor", ">", 1),
    ("tune.perturbation_interval", ">=", 1),
    ("tune.quantile_fraction", ">", 0),
    ("tune.quantile_fraction", "<=", 0.5),
    ("tune.resample_probability", ">=", 0),
    ("tune.resample_probability", "<=", 1),
    ("tune.driver_cpus", ">=", 0),
]


def _validate(cfg: RayppoConfig) -> None:
    """Normalise ``cfg``'s field types in place, then check every rule; raise ``ValueError``
    naming the offending field (one per line when several are wrong)."""
    from pipeline.config import RayppoConfig  # not at the top: pipeline.config imports this module

    # Types first: the range checks below compare numbers.
    _normalise_types(cfg, RayppoConfig, "")
    def get(name: str) -> Any:
        return operator.attrgetter(name)(cfg)

    errors: list[str] = []

    for name, allowed in _ENUMS.items():
        if get(name) not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            errors.append(f"{name}: must be one of {shown}; got {get(name)!r}")
    for name, op, bound in _BOUNDS:
        value = get(name)
        if value is not None and not _OPS[op](value, bound):
            errors.append(f"{name}: must be {op} {bound}, got {value!r}")

    ro, ln, alg, data = cfg.rollout, cfg.learner, cfg.algorithm, cfg.data
    if not cfg.run_name.strip():
        errors.append("run_name: must be a non-empty string")
    if alg.advantage in ("grpo", "rloo") and ro.n_samples < 2:
        errors.append(
            f"algorithm.advantage={alg.advantage!r} needs rollout.n_samples >= 2 "
            f"(the baseline comes from the other samples of a prompt); got {ro.n_samples}"
        )
    if min(cfg.prompts_per_step, ro.n_samples, ln.num_ranks, ln.mini_batches) >= 1:
        total = cfg.prompts_per_step * ro.n_samples
        parts = ln.num_ranks * ln.mini_batches
        if total % parts:
            errors.append(
                f"prompts_per_step * rollout.n_samples ({cfg.prompts_per_step} * "
                f"{ro.n_samples} = {total}) must be divisible by learner.num_ranks * "
                f"learner.mini_batches ({ln.num_ranks} * {ln.mini_batches} = {parts})"
            )
    if data.task is None:
        for name in ("train_files", "eval_files"):
            if not getattr(data, name):
                errors.append(f"data.{name}: must not be empty when data.task is null")
    if data.min_digits > data.max_digits:
        errors.append(
            f"data.min_digits ({data.min_digits}) must be <= data.max_digits ({data.max_digits})"
        )
    if ro.max_staleness not in (0, 1):
        # The weight sync waits for the batch in flight, so a deeper queue would add staleness
        # without adding overlap.
        errors.append(f"rollout.max_staleness: must be 0 (on-policy) or 1 (one step ahead); got {ro.max_staleness!r}")
    if ro.num_workers > cfg.prompts_per_step:
        errors.append(
            f"rollout.num_workers ({ro.num_workers}) must not exceed prompts_per_step "
            f"({cfg.prompts_per_step}): every worker needs at least one prompt"
        )
    if ro.tensor_parallel_size > 1 and cfg.resources.gpus_per_rollout_worker < ro.tensor_parallel_size:
        errors.append(
            f"rollout.tensor_parallel_size={ro.tensor_parallel_size} needs "
            f"resources.gpus_per_rollout_worker >= {ro.tensor_parallel_size}; "
            f"got {cfg.resources.gpus_per_rollout_worker}"
        )
    res = cfg.resources
    if res.learner_ranks_per_node and ln.num_ranks % res.learner_ranks_per_node:
        errors.append(
            f"learner.num_ranks ({ln.num_ranks}) must be a multiple of "
            f"resources.learner_ranks_per_node ({res.learner_ranks_per_node})"
        )
    if res.placement == "colocated":
        for name in ("learner_node_resources", "rollout_node_resources", "learner_node_labels", "rollout_node_labels"):
            if getattr(res, name):
                errors.append(
                    f"resources.{name} selects a node pool, which needs resources.placement="
                    f"'disaggregated' (placement is 'colocated')"
                )
    for name in ("learner_node_resources", "rollout_node_resources"):
        for key, amount in getattr(res, name).items():
            if key in ("CPU", "GPU", "memory") or amount <= 0:
                errors.append(
                    f"resources.{name}.{key}: must be a custom resource with an amount > 0 "
                    f"(CPUs and GPUs come from cpus_per_* / gpus_per_*), got {amount!r}"
                )
    if not cfg.resources.dashboard_host.strip():
        errors.append("resources.dashboard_host: must be a non-empty string")
    for name, fn in (("reward.function", cfg.reward.function), ("reward.eval_function", cfg.reward.eval_function)):
        if fn is None or fn == "builtin":
            continue
        module, _, attr = fn.partition(":")
        if not module.strip() or not attr.strip():
            errors.append(f"{name}: must be 'builtin' or 'package.module:function', got {fn!r}")
    errors += _tune_errors(cfg, base_valid=not errors)
    errors += env_errors(cfg)
    from pipeline.chat_config import chat_errors

    errors += chat_errors(cfg)
    from pipeline.rewards.config import reward_errors  # imports this module

    errors += reward_errors(cfg)
    from pipeline.multiturn import multiturn_errors

    errors += multiturn_errors(cfg)

    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(errors))


def _tune_errors(cfg: RayppoConfig, base_valid: bool) -> list[str]:
    """Rules of the ``tune`` section (the search space itself: :mod:`pipeline.tune.search_space`)."""
    from pipeline.tune.search_space import search_space_errors  # imports this module

    tc = cfg.tune
    errors = []
    if tc.name is not None and (not tc.name.strip() or "/" in tc.name or tc.name in (".", "..")):
        errors.append(f"tune.name: must be a plain directory name (no '/'), got {tc.name!r}")
    if not tc.metric.strip():
        errors.append("tune.metric: must name a metric, e.g. 'eval/accuracy'")
    if tc.scheduler == "asha" and tc.grace_period > cfg.total_steps:
        errors.append(
            f"tune.grace_period ({tc.grace_period}) must be <= total_steps ({cfg.total_steps}): "
            "ASHA never stops a trial before its grace period"
        )
    if tc.scheduler != "fifo" and tc.metric.startswith("eval/") and cfg.eval_every == 0:
        errors.append(
            f"tune.metric={tc.metric!r} is measured every eval_every steps, and eval_every is 0: "
            f"the {tc.scheduler} scheduler would only see its value before training"
        )
    if tc.scheduler == "pbt" and tc.perturbation_interval >= cfg.total_steps:
        errors.append(
            f"tune.perturbation_interval ({tc.perturbation_interval}) must be < total_steps "
            f"({cfg.total_steps}): otherwise PBT never perturbs a trial"
        )
    return errors + search_space_errors(cfg, base_valid=base_valid and not errors)
