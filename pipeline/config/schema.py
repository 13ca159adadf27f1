"""Typed, nested run configuration.

One YAML file (see ``configs/``) fills one :class:`RayppoConfig`; every command (``init-model``,
``sft``, ``train``, ``eval``) reads the section it needs from the same file, so a run is
described in one place. Each field's docstring is the reference documentation for that key.

This module holds the config dataclasses (the schema), :func:`load_config` / :func:`save_config`
(YAML plus ``KEY=VALUE`` overrides), :func:`config_hash` and :func:`field_docs`.

Validation happens in :meth:`RayppoConfig.validate`, before Ray or any model starts, and raises
``ValueError`` naming the offending field (``learner.lr``), never a bare ``assert``. The type
coercion is :mod:`pipeline.config.coerce`; the range / enum / cross-field rules are
:mod:`pipeline.config.checks` and each section's module.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import inspect
import json
import os
import tempfile
import textwrap
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import yaml

from pipeline.config.checks import validate
from pipeline.config.coerce import coerce, field_hints, is_section, short
from pipeline.config.envs import EnvConfig
from pipeline.config.monitors import MonitorsConfig
from pipeline.config.rewards import RewardConfig
from pipeline.config.stages import InitModelConfig, RMConfig, SFTConfig
from pipeline.config.tune import TuneConfig


@dataclass
class ModelConfig:
    """Which policy the RL stage starts from and how it is loaded."""

    path: str = "runs/debug/sft"
    """Local HF directory or hub id of the starting policy (also the frozen reference)."""
    critic_path: Optional[str] = None
    """Where the critic's backbone is loaded from; ``None`` means ``path``. Only used by GAE."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint to run. Off: only enable for trusted sources."""
    dtype: str = "auto"
    """Parameter dtype: ``auto`` (float32 on CPU, bfloat16 mixed precision on GPU),
    ``float32`` or ``bfloat16``."""


@dataclass
class DataConfig:
    """Where prompts come from."""

    task: Optional[str] = "arithmetic"
    """Built-in seeded task generator (``arithmetic``, ``countdown``, or ``support``: the
    support-assistant chat task with a hidden gold rule, see ``docs/chat-rlhf.md``, or
    ``memory``: the multi-turn memory task, see ``docs/multiturn.md``); ``None`` to
    use files."""
    train_files: list[str] = field(default_factory=list)
    """JSONL / Parquet files or ``datasets.save_to_disk`` directories of training prompts."""
    eval_files: list[str] = field(default_factory=list)
    """Same, for held-out evaluation prompts."""
    num_train: int = 2000
    """Number of generated training prompts (built-in task only)."""
    num_eval: int = 200
    """Number of generated held-out prompts (built-in task only)."""
    min_digits: int = 1
    """Smallest operand length in digits (arithmetic task)."""
    max_digits: int = 2
    """Largest operand length in digits (arithmetic task)."""
    seed: int = 0
    """Seed of the task generator and of the prompt order."""
    prompt_key: str = "prompt"
    """Row key holding a plain-text prompt."""
    messages_key: str = "messages"
    """Row key holding a chat as a list of ``{"role", "content"}`` messages (used if present)."""
    answer_key: str = "answer"
    """Row key holding the reference answer passed to the reward function (optional)."""
    reference_key: str = "references"
    """Row key holding reference replies (a string or a list of strings; optional): what
    similarity rewards (BLEU, chrF, ROUGE) and evaluation compare completions with."""
    metadata_key: str = "metadata"
    """Row key holding a free-form object handed to reward sources and environments (optional)."""
    max_prompt_tokens: int = 64
    """Prompts longer than this (after the chat template) are rejected with their row number."""


@dataclass
class RolloutConfig:
    """Generation engines (Ray actors) and sampling."""

    engine: str = "vllm"
    """``vllm`` (default) or ``hf`` (``transformers.generate``, for machines without vLLM)."""
    num_workers: int = 1
    """Number of engine actors; a batch of prompts is split evenly among them."""
    n_samples: int = 8
    """Completions per prompt (the group size of GRPO / RLOO)."""
    temperature: float = 1.0
    """Sampling temperature of training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling mass of training rollouts."""
    max_tokens: int = 16
    """Most tokens generated per completion."""
    tensor_parallel_size: int = 1
    """GPUs per vLLM engine."""
    gpu_memory_utilization: float = 0.5
    """vLLM's memory fraction (GPU only; on CPU the KV cache is ``kv_cache_gib``)."""
    kv_cache_gib: float = 1.0
    """KV cache size in GiB for vLLM on CPU (``VLLM_CPU_KVCACHE_SPACE``)."""
    enforce_eager: bool = True
    """Skip CUDA-graph / compile warm-up: faster start, slower steady state."""
    probe_tolerance: float = 2e-3
    """Largest allowed mean absolute difference between engine and learner logprobs on the
    probe batch after a weight sync. The engines score the probe in their next ``generate``, so
    above it the next step (or evaluation) fails before any of its samples are used."""
    probe_size: int = 4
    """Number of fixed probe sequences checked after each weight sync (scored by every engine
    beside its next batch of prompts, and by the learner)."""
    verify_every: int = 1
    """Verify the weight sync every this many syncs (1 = every step)."""
    max_staleness: int = 0
    """Policy versions a training batch may lag the learner. 0: each step generates its own
    batch with the current weights, then trains on it (on-policy, exact). 1: the engines
    generate the next step's batch while the learners train on this one, one version behind;
    the PPO ratio is then taken against the engines' own (behaviour) logprobs, and in-flight
    batches are saved with checkpoints so a resume continues exactly. Pays where engines and
    learners have their own devices; on shared CPU cores they compete instead."""
    torch_threads: int = 0
    """Intra-op threads of each engine on CPU; 0 keeps Ray's default (the actor's CPU count).
    Generation and the learner phases run one after another, so an engine may use every core
    of its node even when it reserves fewer."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token until ``max_tokens`` (every completion has
    the same length). For benchmarks that must compare equal work; leave off for training."""


@dataclass
class LearnerConfig:
    """The FSDP2 learner group."""

    num_ranks: int = 2
    """Number of learner actors (one ``torch.distributed`` rank each)."""
    lr: float = 1e-5
    """Peak learning rate of the policy."""
    critic_lr: float = 1e-4
    """Peak learning rate of the critic (GAE only)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_eps: float = 1e-8
    """AdamW epsilon. Policy gradients give tokens the policy rarely samples tiny but
    consistently signed gradients; with a tiny epsilon Adam scales those up to full-size steps
    and probability mass drifts to junk tokens. A larger value (1e-5..1e-4) damps that."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batches: int = 1
    """Optimizer steps per epoch (the batch is split into this many mini-batches)."""
    micro_batch_tokens: int = 4096
    """Token budget of one forward/backward micro-batch (gradient accumulation beyond it)."""
    share_prompt_forward: bool = True
    """Run each distinct prompt of a micro-batch once and repeat its keys/values for all of its
    samples, in the reference, old-logprob and update passes of the policy. The samples of a
    group share their prompt, so this saves ``(n_samples - 1) / n_samples`` of the prompt
    tokens' compute; the maths is the same up to float rounding. Off: every sample's prompt is
    computed again (one pass per micro-batch instead of two)."""
    logits_chunk_tokens: int = 256
    """Tokens whose logits exist at once when log-probabilities and entropy are computed: the
    model's head is applied to the final hidden states this many tokens at a time, each chunk
    recomputed in the backward pass, so peak memory does not grow with the vocabulary (float32
    logits of 8,192 tokens at Qwen3's vocabulary are 5 GB). 0: the whole micro-batch's logits
    at once. Heads other than a plain linear layer (plus softcap) always use full logits."""
    fsdp_single_rank: bool = True
    """Wrap the models with FSDP2 even when the group has one rank on CPU. Off: plain modules,
    the same maths without FSDP2's per-layer all-gather/reduce-scatter copies (on W1-cpu the
    difference was within run-to-run noise). On GPU, and with several ranks, FSDP2 is always
    used: it also carries the bf16 mixed-precision policy."""
    seed: int = 0
    """Seed of the learner (dropout-free models make it matter only for ties)."""


@dataclass
class AlgorithmConfig:
    """Advantage estimator and loss."""

    advantage: str = "grpo"
    """``gae`` (critic), ``grpo``, ``rloo`` or ``reinforce_pp``."""
    gamma: float = 1.0
    """Discount factor."""
    lam: float = 0.95
    """GAE lambda."""
    grpo_scale_std: bool = True
    """GRPO: divide by the group's reward standard deviation."""
    clip_low: float = 0.2
    """PPO ratio clip below 1 (ratio >= 1 - clip_low)."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (ratio <= 1 + clip_high)."""
    value_clip: float = 0.2
    """Clip range of the value loss around the old values."""
    vf_coef: float = 0.5
    """Weight of the value loss (GAE only)."""
    kl_coef: float = 0.0
    """Weight of the KL to the frozen reference; 0 disables the reference model."""
    kl_mode: str = "loss"
    """``loss`` (KL term added to the policy loss) or ``reward`` (per-token reward penalty)."""
    kl_estimator: str = "k3"
    """``k1`` (log-ratio), ``k2`` (squared log-ratio / 2) or ``k3`` (unbiased, non-negative)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    loss_agg: str = "token_mean"
    """``token_mean`` or ``seq_mean_token_mean`` aggregation of per-token losses."""


@dataclass
class CheckpointConfig:
    """Atomic checkpoints and resume."""

    dir: str = "runs/debug/checkpoints"
    """Directory holding ``step_XXXXXX/`` checkpoints and the ``latest`` pointer."""
    every_steps: int = 10
    """Save every this many RL steps (and always at the end); 0 = only at the end."""
    resume: Optional[str] = None
    """``latest`` or a checkpoint directory to continue from; ``auto``: ``latest`` when there is
    a complete checkpoint, else start fresh (what a retried job wants); ``None`` starts fresh."""
    keep_last: int = 2
    """Older checkpoints beyond this many are deleted after a successful save."""
    export_dir: Optional[str] = "runs/debug/policy"
    """Where the final policy is exported as an HF directory; ``None`` skips the export."""


@dataclass
class LoggingConfig:
    """Metrics sinks."""

    dir: str = "runs/debug/logs"
    """Directory of ``metrics.jsonl`` and the final ``curves.png``."""
    wandb_mode: str = "offline"
    """``offline``, ``online`` or ``disabled``."""
    wandb_project: str = "rayppo"
    """W&B project name."""
    wandb_group: Optional[str] = None
    """W&B group of the run; ``rayppo sweep`` sets it to the sweep's name so its trials appear
    together."""
    progress_bar: bool = True
    """Show a progress bar on stderr."""
    sample_every: int = 0
    """Every this many steps, write the step's samples (prompt, completion, reward) to
    ``samples.jsonl`` in ``dir``: what ``rayppo feedback add-tasks --from-run`` turns into items
    for raters. 0 writes none."""
    sample_prompts: int = 4
    """Prompts per logged step; all ``rollout.n_samples`` samples of each are written."""


@dataclass
class ResourcesConfig:
    """Ray resources per role."""

    cpus_per_learner: float = 1.0
    """CPUs reserved by each learner rank."""
    gpus_per_learner: float = 0.0
    """GPUs reserved by each learner rank (NCCL + bf16 when > 0)."""
    cpus_per_rollout_worker: float = 1.0
    """CPUs reserved by each engine actor."""
    gpus_per_rollout_worker: float = 0.0
    """GPUs per engine actor (``tensor_parallel_size`` is taken from ``rollout``)."""
    local_num_cpus: Optional[int] = None
    """CPUs a locally started Ray advertises; ``None`` = enough for the roles above."""
    dashboard_host: str = "127.0.0.1"
    """Interface the local Ray dashboard binds to. Keep it private unless you know why not."""
    torch_threads: int = 1
    """Intra-op threads per learner rank (CPU)."""
    cpu_keep_freed_memory: bool = True
    """CPU learner ranks and engines keep freed memory in their heap instead of returning it to
    the kernel (glibc ``mallopt``), so each step reuses mapped pages instead of page-faulting
    fresh ones. Costs resident memory that stays at the step's peak. No effect on GPU roles."""
    placement: str = "colocated"
    """How roles map to nodes. ``colocated``: one placement group (PACK) holds every learner rank
    and engine, so they share nodes and may share GPUs through fractional ``gpus_per_*``.
    ``disaggregated``: one placement group per role, each restricted to its own node pool by
    ``learner_node_*`` / ``rollout_node_*``."""
    learner_node_resources: dict[str, float] = field(default_factory=dict)
    """Custom resources each learner bundle also reserves, e.g. ``{learner_pool: 0.01}`` to use
    only nodes started with ``ray start --resources '{"learner_pool": 1}'``."""
    rollout_node_resources: dict[str, float] = field(default_factory=dict)
    """Custom resources each rollout-engine bundle also reserves (see ``learner_node_resources``)."""
    learner_node_labels: dict[str, str] = field(default_factory=dict)
    """Node labels learner bundles must match, e.g. ``{pool: learner}`` for nodes started with
    ``ray start --labels pool=learner`` (KubeRay: ``rayStartParams.labels``)."""
    rollout_node_labels: dict[str, str] = field(default_factory=dict)
    """Node labels rollout-engine bundles must match."""
    learner_ranks_per_node: Optional[int] = None
    """Place exactly this many learner ranks on each node (``num_ranks`` must be a multiple);
    ``None`` lets Ray pack them."""
    placement_timeout_s: float = 120.0
    """Seconds to wait for a placement group the cluster can hold but has not freed yet (busy
    nodes, autoscaling) before failing with what was asked and what is free; also how long a
    replacement for a lost engine or learner group waits for its bundles (after a node loss)."""
    max_engine_restarts: int = 3
    """Rollout engines that may be lost (and replaced) in one run before it stops; -1: no limit."""
    max_failures: int = 3
    """Learner-group failures (a dead rank or node, a hung collective) the run recovers from by
    restarting the group from the last checkpoint (from the start without one); 0: none, -1: no
    limit. Ray Train's ``FailureConfig.max_failures``, counted per driver process."""
    engine_timeout_s: float = 600.0
    """Longest an engine call (generate, weight load, probe scoring) may take; an engine that
    does not answer in time is treated as lost: killed and replaced."""
    learner_timeout_s: float = 1800.0
    """Longest a learner-group call (compute, update, save, ...) may take, also the process
    group's collective timeout: past it the group counts as failed (``max_failures``)."""


@dataclass
class RayppoConfig:
    """A whole run."""

    run_name: str = "debug"
    """Name of the run (W&B run name, log headers)."""
    seed: int = 0
    """Global seed: sampling seeds, data order, init."""
    total_steps: int = 30
    """RL steps to run."""
    prompts_per_step: int = 16
    """Prompts per RL step (each sampled ``rollout.n_samples`` times)."""
    eval_every: int = 10
    """Evaluate greedy accuracy on held-out prompts every this many steps (0 = start/end only)."""
    init: InitModelConfig = field(default_factory=InitModelConfig)
    """``rayppo init-model``: the locally built base model and tokenizer."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting policy of the RL stage."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompt sources."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """``rayppo sft``: the supervised warm start."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation engines and sampling."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The FSDP2 learner group."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantage estimator and loss."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward sources and their weighted sum (``docs/rewards.md``); the reward server."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints, resume and the final export."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics sinks."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Ray resources per role and their placement on nodes."""
    storage_path: Optional[str] = None
    """Root for the run's outputs: relative ``logging.dir``, ``checkpoint.dir`` and
    ``checkpoint.export_dir`` are placed under it. On a cluster point it at shared storage
    (NFS, a mounted bucket) so results outlive the job's driver; ``rayppo sweep`` keeps its
    trials under ``storage_path/<tune.name>``."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """``rayppo sweep``: the search space, metric and scheduler."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Multi-turn dialogue: the environment (``env.class``), conversation limits, the LLM user."""
    rm: RMConfig = field(default_factory=RMConfig)
    """``rayppo rm``: the reward model trained on preference pairs."""
    monitors: MonitorsConfig = field(default_factory=MonitorsConfig)
    """Reward-hacking monitors of ``rayppo train`` (warn, optionally stop)."""

    def validate(self) -> "RayppoConfig":
        """Check types, ranges and cross-field consistency; raise ``ValueError`` naming the field.

        Values are normalised in place (an ``int`` given for a ``float`` field becomes a float),
        so a config built in Python is held to the same rules as one loaded from YAML.
        Returns ``self`` so calls chain.
        """
        validate(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading


def _all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    cls = cls or RayppoConfig
    keys = []
    for name, hint in field_hints(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if is_section(hint):
            keys.extend(_all_keys(hint, dotted + "."))
    return keys


def _unknown_key(key: Any, cls: type, prefix: str) -> ValueError:
    key = str(key)
    dotted = f"{prefix}.{key}" if prefix else key
    valid = list(field_hints(cls)) + list(getattr(cls, "_yaml_aliases", {}))
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    else:
        # A right key in the wrong section, e.g. top-level ``lr``.
        elsewhere = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == key]
        if elsewhere:
            hint = "did you mean " + " or ".join(f"'{k}'" for k in elsewhere) + "?"
        else:
            where = f"'{prefix}'" if prefix else "the top level"
            hint = f"valid keys at {where}: {', '.join(valid)}"
    return ValueError(f"unknown config key '{dotted}' ({hint})")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:  # a section whose keys are all commented out
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{prefix}: expected a mapping of {cls.__name__} keys, got {short(raw)}"
        )
    hints = field_hints(cls)
    aliases = getattr(cls, "_yaml_aliases", {})  # YAML keys that are Python keywords (env.class)
    shown = {field_name: yaml_key for yaml_key, field_name in aliases.items()}
    kwargs = {}
    for key, value in raw.items():
        key = aliases.get(key, key)
        if key not in hints:
            raise _unknown_key(key, cls, prefix)
        dotted = f"{prefix}.{shown.get(key, key)}" if prefix else key
        hint = hints[key]
        kwargs[key] = _build(hint, value, dotted) if is_section(hint) else coerce(value, hint, dotted)
    return cls(**kwargs)


def _deep_merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def _apply_override(raw: dict, item: Any) -> None:
    if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
        raise ValueError(
            f"malformed override {item!r}: expected KEY=VALUE, e.g. 'learner.lr=1e-5'"
        )
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"override {item!r}: cannot parse the value as YAML: {exc}") from None
    parts = key.split(".")
    cls, node = RayppoConfig, raw
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        hints = field_hints(cls)
        part = getattr(cls, "_yaml_aliases", {}).get(part, part)
        if part not in hints:
            raise _unknown_key(part, cls, prefix)
        hint = hints[part]
        if i == len(parts) - 1:
            if isinstance(value, dict) and isinstance(node.get(part), dict):
                _deep_merge(node[part], value)
            else:
                node[part] = value
            return
        dotted = ".".join(parts[: i + 1])
        if not is_section(hint):
            raise ValueError(f"override {item!r}: '{dotted}' is a field, not a section")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ValueError(f"{dotted}: expected a mapping of {hint.__name__} keys, got {short(child)}")
        cls, node = hint, child


def load_config(
    path: str | os.PathLike | None,
    overrides: Iterable[str] = (),
    *,
    validate: bool = True,
) -> RayppoConfig:
    """Read a YAML file (or only defaults when ``path`` is ``None``), apply ``KEY=VALUE``
    overrides (values parsed as YAML, ``null`` for ``None``) and return the typed config.

    Raises ``ValueError`` naming the file, override or field that is wrong. With ``validate``
    (the default) the result has passed :meth:`RayppoConfig.validate`.
    """
    raw: Any = {}
    if path is not None:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError(
                f"{path}: the top level must be a mapping of config keys, "
                f"got {type(raw).__name__}"
            )
    if isinstance(overrides, str):  # a lone string would be split into characters
        overrides = [overrides]
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(RayppoConfig, raw, "")
    return cfg.validate() if validate else cfg


def save_config(cfg: RayppoConfig, path: str | os.PathLike) -> str:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal config."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
    # Written beside the target and renamed so a crash never leaves a half-written file.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".yaml.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def resolve_storage(cfg: RayppoConfig) -> RayppoConfig:
    """Place the run's relative output directories under ``cfg.storage_path`` (in place).

    The results become absolute paths, so doing this twice, or reloading a saved config that
    still names ``storage_path``, changes nothing.
    """
    if not cfg.storage_path:
        return cfg
    root = os.path.abspath(os.path.expanduser(cfg.storage_path))
    cfg.storage_path = root
    cfg.logging.dir = os.path.join(root, cfg.logging.dir)
    cfg.checkpoint.dir = os.path.join(root, cfg.checkpoint.dir)
    if cfg.checkpoint.export_dir:
        cfg.checkpoint.export_dir = os.path.join(root, cfg.checkpoint.export_dir)
    return cfg


def config_hash(cfg: RayppoConfig) -> str:
    """Identity of a run's settings: 16 hex chars of the SHA-256 of the config's JSON.

    ``checkpoint.resume`` and ``total_steps`` are left out because continuing (and extending)
    a run changes them without making it a different run.
    """
    data = cfg.to_dict()
    data.pop("total_steps", None)
    data["checkpoint"].pop("resume", None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a config dataclass, read from the string literal that follows
    each field in the source (the convention this module uses); fields without one are absent."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs
