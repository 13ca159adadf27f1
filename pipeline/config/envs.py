"""The ``env:`` section of a run config: which dialogue environment a multi-turn run talks to.

A section of :class:`pipeline.config.RayppoConfig` like the others (a docstring under every
field, validated with the rest by :func:`env_errors`). ``class`` is a Python keyword, so the
field is ``class_path`` and the loader maps the YAML key ``class`` (and the override
``env.class=...``) onto it; both spellings load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

ENGINES = ("vllm", "hf")


@dataclass
class UserConfig:
    """The LLM user (``pipeline.envs.users:LLMUserEnv``): another model plays the user,
    served by its own engine actor with its own sampling settings. It is never trained."""

    model_path: Optional[str] = None
    """Local HF directory or hub id of the user model. Required by ``LLMUserEnv``; when set
    (and ``env.class`` too) the run counts the user engine's ``num_cpus`` / ``num_gpus`` among
    the resources it needs."""
    persona: str = (
        "You are a customer of an online shop talking to its support assistant. "
        "Write one short message per turn."
    )
    """System prompt of the user model: who it plays and how it talks."""
    engine: str = "vllm"
    """``vllm`` or ``hf`` (``transformers.generate``), as ``rollout.engine``."""
    temperature: float = 0.7
    """Sampling temperature of the user's messages."""
    top_p: float = 1.0
    """Nucleus sampling mass of the user's messages."""
    max_tokens: int = 32
    """Most tokens in one user message."""
    max_user_turns: int = 2
    """User messages after the opening one; the conversation ends after the assistant answers
    the last of them (or earlier at ``env.max_turns``)."""
    stop_phrase: Optional[str] = None
    """A user message containing this text ends the conversation (the user is satisfied)."""
    reward: Optional[str] = None
    """Rule scoring the whole conversation at its end, ``package.module:function`` called as
    ``fn(messages: list[dict], answer: str | None) -> float``; it becomes the conversation
    reward. ``None``: every conversation scores 0."""
    seed: int = 0
    """Base seed of the user's sampling (each user message's seed also depends on the
    conversation's seed and turn, so runs repeat exactly)."""
    max_model_len: int = 512
    """Longest conversation (in the user model's tokens) the user engine accepts."""
    dtype: str = "auto"
    """Parameter dtype of the user model: ``auto``, ``float32`` or ``bfloat16``."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the user model's checkpoint to run."""
    num_cpus: float = 1.0
    """CPUs the user engine actor reserves."""
    num_gpus: float = 0.0
    """GPUs the user engine actor reserves."""
    kv_cache_gib: float = 1.0
    """KV cache of the user's vLLM engine on CPU, in GiB."""
    gpu_memory_utilization: float = 0.3
    """vLLM's memory fraction for the user engine (GPU only; leave room for the policy's)."""
    torch_threads: int = 0
    """Intra-op threads of the user engine on CPU; 0 keeps Ray's default."""
    start_timeout_s: float = 600.0
    """Seconds the user engine may take to load before the run fails with an error."""
    request_timeout_s: float = 45.0
    """Seconds one user message may take; past it that conversation is unscorable. Keep it
    below ``env.step_timeout_s``, which bounds the whole step."""


@dataclass
class EnvConfig:
    """Multi-turn dialogue: the environment class, its arguments and the conversation limits.
    With ``class`` null (the default) every rollout is a single prompt -> completion."""

    _yaml_aliases: ClassVar[dict[str, str]] = {"class": "class_path"}

    class_path: Optional[str] = None
    """YAML key ``class``: the environment, ``package.module:Class`` (see
    ``docs/multiturn.md``), e.g. ``pipeline.envs.memory:MemoryEnv``. ``None``: single-turn."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the environment's constructor."""
    max_turns: int = 8
    """Most assistant turns per conversation; the conversation ends after the last one (the
    memory task needs ``max_distance + 2``)."""
    max_tokens_per_turn: int = 24
    """Most tokens the policy generates in one assistant turn."""
    max_tokens_per_conversation: int = 256
    """Most tokens after the opening prompt (assistant and environment tokens together); a
    conversation that reaches it ends."""
    step_timeout_s: float = 60.0
    """Seconds one ``reset`` or ``step`` may take; past it that conversation is unscorable."""
    step_threads: int = 8
    """Threads running a synchronous environment's ``reset`` / ``step`` calls, so a slow one
    (an HTTP call, a model) never blocks the conversations that are ready."""
    trial_step: bool = True
    """Validate the environment before heavy work with one ``reset`` and one ``step`` on the
    first training row. Turn off for environments whose ``step`` needs services started later
    (an environment class can also say so itself with ``trial_step = False``)."""
    user: UserConfig = field(default_factory=UserConfig)
    """The simulated LLM user (``pipeline.envs.users:LLMUserEnv``)."""


def user_engine_resources(env: EnvConfig) -> dict[str, float]:
    """What the LLM user's engine actor reserves (outside the run's placement groups): nothing
    unless ``env.class`` and ``env.user.model_path`` are set."""
    if env.class_path is None or env.user.model_path is None:
        return {}
    return {"CPU": env.user.num_cpus, "GPU": env.user.num_gpus}


def _import_path_error(name: str, value: str, what: str) -> str | None:
    module, sep, attr = value.partition(":")
    if not sep or not module.strip() or not attr.strip() or ":" in attr:
        return f"{name}: must be an import path 'package.module:{what}', got {value!r}"
    return None


def env_errors(cfg) -> list[str]:
    """Range and cross-field rules of the ``env`` section (importing the class is
    :func:`pipeline.envs.base.load_env`'s job, at run start)."""
    env, user = cfg.env, cfg.env.user
    errors = []
    if env.class_path is not None:
        problem = _import_path_error("env.class", env.class_path, "Class")
        if problem:
            errors.append(problem)
    for name in ("max_turns", "max_tokens_per_turn", "max_tokens_per_conversation", "step_threads"):
        if getattr(env, name) < 1:
            errors.append(f"env.{name}: must be >= 1, got {getattr(env, name)!r}")
    if env.step_timeout_s <= 0:
        errors.append(f"env.step_timeout_s: must be > 0, got {env.step_timeout_s!r}")
    if env.max_tokens_per_turn > env.max_tokens_per_conversation:
        errors.append(
            f"env.max_tokens_per_turn ({env.max_tokens_per_turn}) must be <= "
            f"env.max_tokens_per_conversation ({env.max_tokens_per_conversation})"
        )
    if user.engine not in ENGINES:
        errors.append(f"env.user.engine: must be one of {', '.join(ENGINES)}; got {user.engine!r}")
    if user.dtype not in ("auto", "float32", "bfloat16"):
        errors.append(f"env.user.dtype: must be one of auto, float32, bfloat16; got {user.dtype!r}")
    if user.reward is not None:
        problem = _import_path_error("env.user.reward", user.reward, "function")
        if problem:
            errors.append(problem)
    for name, low, strict in (
        ("temperature", 0, False), ("top_p", 0, True), ("max_tokens", 1, False),
        ("max_user_turns", 0, False), ("max_model_len", 8, False), ("num_cpus", 0, False),
        ("num_gpus", 0, False), ("kv_cache_gib", 0, True), ("torch_threads", 0, False),
        ("start_timeout_s", 0, True), ("request_timeout_s", 0, True), ("gpu_memory_utilization", 0, True),
    ):
        value = getattr(user, name)
        if value < low or (strict and value == low):
            errors.append(f"env.user.{name}: must be {'>' if strict else '>='} {low}, got {value!r}")
    if user.model_path is not None and user.request_timeout_s >= env.step_timeout_s:
        errors.append(
            f"env.user.request_timeout_s ({user.request_timeout_s}) must be < env.step_timeout_s "
            f"({env.step_timeout_s}): the step that waits for the user message is bounded by the latter"
        )
    for name in ("top_p", "gpu_memory_utilization"):
        if getattr(user, name) > 1:
            errors.append(f"env.user.{name}: must be <= 1, got {getattr(user, name)!r}")
    return errors


def multiturn_errors(cfg) -> list[str]:
    """Rules across sections for multi-turn runs (``env.class`` set)."""
    if not cfg.env.class_path:
        return []
    errors = []
    if cfg.reward.function != "builtin":
        errors.append(
            f"reward.function={cfg.reward.function!r} does not apply with env.class set: the environment "
            "gives the rewards; add the function to reward.sources to score each final reply as well"
        )
    return errors
