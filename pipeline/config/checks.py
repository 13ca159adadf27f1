"""The config validator: types, ranges, enums and the rules that span sections.

:meth:`RayppoConfig.validate` calls :func:`validate`, which normalises every field's type
(:mod:`pipeline.config.coerce`), checks allowed values (``_ENUMS``), numeric bounds
(``_BOUNDS``) and the cross-field rules of the core sections, then adds each section's own
checks (``<section>_errors(cfg) -> list[str]``, one sentence per problem, beside the section's
dataclass) and raises one ``ValueError`` naming every offending field.
"""

from __future__ import annotations

import operator
from typing import Any

from pipeline.config.coerce import normalise_types
from pipeline.config.envs import env_errors, multiturn_errors
from pipeline.config.monitors import monitors_errors
from pipeline.config.rewards import reward_errors
from pipeline.config.stages import rm_errors
from pipeline.config.tune import tune_errors



# ---------------------------------------------------------------------------------------------
# Ranges, enums and cross-field rules

_ENUMS: dict[str, tuple] = {
    "init.architecture": (None, "qwen2", "qwen3", "llama", "gemma3"),
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
    ("sft.logits_chunk_tokens", ">=", 0),
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
    ("learner.logits_chunk_tokens", ">=", 0),
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


def validate(cfg) -> None:
    """Normalise ``cfg``'s field types in place, then check every rule, the sections' own
    included; raise ``ValueError`` naming the offending field (one per line when several are
    wrong)."""
    # Types first: the range checks below compare numbers.
    normalise_types(cfg, type(cfg), "")

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
    errors += tune_errors(cfg, base_valid=not errors)
    errors += env_errors(cfg)
    errors += rm_errors(cfg)
    errors += monitors_errors(cfg)
    errors += reward_errors(cfg)
    errors += multiturn_errors(cfg)

    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(errors))
