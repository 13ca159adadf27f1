"""The ``reward`` section: the sources a step's reward is the weighted sum of, and the reward server.

``reward.sources`` is a list of mappings; each is parsed into the typed dataclass of its
``kind`` below (the field docstrings are the reference for every setting). Unknown keys are
rejected with the nearest valid one, and every error names the entry and its source, e.g.
``reward.sources[1].timeout_s (source 'judge'): must be > 0, got -1.0``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config.coerce import coerce, field_hints, short


@dataclass
class SourceConfig:
    """Settings every source has."""

    kind: str = ""
    """``rule``, ``model``, ``judge``, ``http`` or ``similarity``."""
    name: str = ""
    """Name in metrics (``reward/<name>/mean``) and errors; defaults to the kind (the metric for
    ``similarity``). Letters, digits, ``_ . -``; unique within the list."""
    weight: float = 1.0
    """Factor of this source in the weighted sum. 0 scores and logs it without letting it count
    (a monitor); any other weight makes a sample unscorable when this source cannot score it."""


@dataclass
class RuleSourceConfig(SourceConfig):
    """``kind: rule``: a task verifier or a Python function, run on the driver."""

    function: str = "builtin"
    """``builtin`` (the task's verifier) or ``package.module:function`` called as
    ``fn(prompt, completion, answer)``, plus any of ``messages``, ``references``, ``metadata``,
    ``tokenizer`` the function names as keyword parameters."""
    timeout_s: Optional[float] = None
    """Give up on a batch after this many seconds (its samples become unscorable); ``None``
    waits as long as the function takes."""


@dataclass
class ActorSourceConfig(SourceConfig):
    """Settings of sources served by their own Ray actors (``model``, ``judge``)."""

    path: str = ""
    """Local HF directory or hub id of the model the actors load."""
    num_actors: int = 1
    """Actors serving this source; a batch is split evenly among them."""
    cpus: float = 1.0
    """CPUs each actor reserves (a bundle of the run's placement group, role ``reward``)."""
    gpus: float = 0.0
    """GPUs each actor reserves; fractions share a device with other roles on a cluster."""
    node_labels: dict[str, str] = field(default_factory=dict)
    """Node labels the actors' bundles must match (``resources.placement: disaggregated``)."""
    dtype: str = "auto"
    """``auto`` (bfloat16 on GPU, float32 on CPU), ``float32`` or ``bfloat16``."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the checkpoint to run. Off unless the source is trusted."""
    timeout_s: float = 300.0
    """Seconds ``collect`` waits for the actors' scores; samples still pending then are
    unscorable (``timeout``), never a hang."""
    torch_threads: int = 0
    """Intra-op threads of each actor on CPU; 0 keeps Ray's default (the actor's CPU count)."""


@dataclass
class ModelSourceConfig(ActorSourceConfig):
    """``kind: model``: a sequence-classification reward model (e.g. from ``rayppo rm``)."""

    batch_size: int = 16
    """Sequences per forward pass of an actor."""
    max_length: int = 1024
    """Most tokens of a rendered conversation; longer ones keep their last ``max_length``
    tokens (the reply and the token the score is read at) and are counted as ``truncated``."""
    normalize: Optional[bool] = None
    """Standardise scores with the mean and std in ``reward_stats.json`` beside the model.
    ``None``: when that file exists; ``true``: the file must exist."""


@dataclass
class JudgeSourceConfig(ActorSourceConfig):
    """``kind: judge``: an LLM judge on a generation engine; its reply is parsed for a score."""

    engine: str = "vllm"
    """``vllm`` or ``hf`` (``transformers.generate``, for machines without vLLM)."""
    mode: str = "pointwise"
    """``pointwise``: the judge rates the reply alone. ``pairwise``: the judge compares the reply
    with another one (``against``); the score is 1 when the reply wins, 0 when it loses, 0.5 for
    a tie."""
    against: str = "reference"
    """Pairwise: the other reply is the row's first reference (``reference``) or the row's
    ``metadata[baseline_key]`` (``baseline``, e.g. another model's reply in ``rayppo eval``)."""
    baseline_key: str = "baseline"
    """Metadata key of the baseline reply (``against: baseline``)."""
    template: str = ""
    """Prompt template: a built-in name (``pointwise``, ``pairwise``, ``pointwise_digit``) or a
    text file. Placeholders ``{conversation}``, ``{prompt}``, ``{completion}``, ``{reference}``,
    ``{response_a}``, ``{response_b}``; other braces are left as they are. Empty: the built-in
    one of ``mode``."""
    score_min: float = 0.0
    """Pointwise: lowest valid score; a parsed score outside [score_min, score_max] is
    unparsable."""
    score_max: float = 10.0
    """Pointwise: highest valid score."""
    normalize: bool = True
    """Pointwise: map [score_min, score_max] to [0, 1]."""
    swap: bool = False
    """Pairwise: also ask with the two replies swapped and average, which cancels the judge's
    position bias (twice the generations)."""
    verdict: str = "free"
    """``free``: the judge writes what it likes and its reply is parsed (templates that ask for
    reasoning before the verdict need this). ``constrained``: decoding is restricted so the reply
    is always a valid verdict in the form the template shows (pairwise ``{"winner": "A"}``,
    ``[[A]]`` or bare ``A``, with ``tie`` when the template mentions ties; pointwise the whole
    numbers from score_min to score_max), so no reply is unparsable and ``max_tokens`` does not
    apply. vLLM uses its structured outputs, ``hf`` an allowed-token filter."""
    max_tokens: int = 32
    """Most tokens the judge generates per reply."""
    temperature: float = 0.0
    """Judge sampling temperature (0 = greedy, reproducible)."""
    max_model_len: Optional[int] = None
    """Context length of the judge engine; ``None`` = the model's own. Prompts that do not fit
    with ``max_tokens`` are unscorable (``too_long``)."""
    kv_cache_gib: float = 1.0
    """KV cache of a vLLM judge on CPU, in GiB."""
    gpu_memory_utilization: float = 0.3
    """vLLM's memory fraction on GPU (keep room for the roles sharing the device)."""
    seed: int = 0
    """Sampling seed of the judge engine."""


@dataclass
class HttpSourceConfig(SourceConfig):
    """``kind: http``: a remote reward server speaking the schema in ``docs/rewards.md``."""

    url: str = ""
    """``http(s)://host:port/path`` the batches are POSTed to (``rayppo serve-reward``: ``/score``)."""
    token_env: Optional[str] = None
    """Environment variable holding the bearer token sent with every request."""
    token_file: Optional[str] = None
    """File holding the bearer token (read once at start; surrounding whitespace stripped)."""
    batch_size: int = 32
    """Samples per request."""
    max_concurrency: int = 4
    """Requests in flight at once."""
    timeout_s: float = 30.0
    """Seconds per request attempt (connect + read)."""
    max_retries: int = 3
    """Retries of a request after a connection error, a timeout, HTTP 429 or 5xx; other 4xx
    and malformed replies are not retried."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubles on each later one."""
    max_backoff_s: float = 8.0
    """Longest wait between two attempts."""
    breaker_failures: int = 5
    """Consecutive failed requests (after their retries) that open the circuit breaker: the
    batch's remaining requests then fail at once without being sent (``circuit_open``), and the
    next batch first sends one probe request, whose success closes the breaker. Bounds what a
    server that rejects every request or never answers costs a step. 0 = no breaker."""


@dataclass
class SimilaritySourceConfig(SourceConfig):
    """``kind: similarity``: agreement with the row's reference replies, 0..1."""

    metric: str = "bleu"
    """``bleu``, ``chrf`` (sacrebleu) or ``rouge1``, ``rouge2``, ``rougeL`` (rouge-score)."""
    rouge_measure: str = "fmeasure"
    """ROUGE: ``fmeasure``, ``precision`` or ``recall``."""
    use_stemmer: bool = False
    """ROUGE: Porter-stem words before matching."""
    lowercase: bool = False
    """BLEU / chrF: compare lowercased text (ROUGE always lowercases)."""


@dataclass
class RewardServerConfig:
    """``rayppo serve-reward``: the configured sources over HTTP (schema in ``docs/rewards.md``)."""

    host: str = "127.0.0.1"
    """Interface to bind. Keep it private unless the network in front is trusted."""
    port: int = 8321
    """TCP port."""
    token_env: str = "RAYPPO_REWARD_TOKEN"
    """Environment variable holding the bearer token clients must send."""
    token_file: Optional[str] = None
    """File holding the token (takes precedence over ``token_env``)."""
    allow_unauthenticated: bool = False
    """Serve without a token. Off: the server refuses to start when no token is configured."""
    max_batch: int = 1024
    """Largest number of samples one request may carry (HTTP 413 above)."""


@dataclass
class RewardConfig:
    """How completions are scored."""

    function: str = "builtin"
    """One-rule shorthand: ``builtin`` (the task's verifier) or an import path
    ``package.module:function`` called as ``fn(prompt: str, completion: str, answer) -> float``.
    Used when ``sources`` is empty (it becomes one ``rule`` source named ``rule``)."""
    eval_function: Optional[str] = None
    """Scores held-out completions (``eval/accuracy``); ``None`` = same as ``function`` (with
    ``sources``: the task's verifier, when there is a task). Lets training use a shaped reward
    while evaluation stays exact-match."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """Reward sources: a list of ``{kind, name, weight, ...}`` (see ``docs/rewards.md``). A
    step's reward is the weighted sum; a sample is unscorable when any source with a weight
    other than 0 cannot score it."""
    max_unscorable_steps: int = 3
    """Stop the run with an error naming each failing source's first problem after this many
    consecutive training steps in which not one sample could be scored (a wrong token, a server
    that is down): such steps cannot teach the policy anything. A step with any scorable sample
    resets the count. 0 = never stop."""
    server: RewardServerConfig = field(default_factory=RewardServerConfig)
    """``rayppo serve-reward``: where and how the sources are served."""


KINDS: dict[str, type] = {
    "rule": RuleSourceConfig,
    "model": ModelSourceConfig,
    "judge": JudgeSourceConfig,
    "http": HttpSourceConfig,
    "similarity": SimilaritySourceConfig,
}
ACTOR_KINDS = ("model", "judge")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

_ENUMS: dict[str, tuple] = {
    "dtype": ("auto", "float32", "bfloat16"),
    "engine": ("vllm", "hf"),
    "mode": ("pointwise", "pairwise"),
    "against": ("reference", "baseline"),
    "verdict": ("free", "constrained"),
    "metric": ("bleu", "chrf", "rouge1", "rouge2", "rougeL"),
    "rouge_measure": ("fmeasure", "precision", "recall"),
}
_BOUNDS: list[tuple[str, str, float]] = [
    ("timeout_s", ">", 0),
    ("num_actors", ">=", 1),
    ("cpus", ">=", 0),
    ("gpus", ">=", 0),
    ("torch_threads", ">=", 0),
    ("batch_size", ">=", 1),
    ("max_length", ">=", 2),
    ("max_tokens", ">=", 1),
    ("temperature", ">=", 0),
    ("max_model_len", ">=", 2),
    ("kv_cache_gib", ">", 0),
    ("gpu_memory_utilization", ">", 0),
    ("gpu_memory_utilization", "<=", 1),
    ("max_concurrency", ">=", 1),
    ("max_retries", ">=", 0),
    ("backoff_s", ">=", 0),
    ("max_backoff_s", ">=", 0),
    ("breaker_failures", ">=", 0),
]
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}


def _entry_error(index: int, name: str, key: str, text: str) -> str:
    where = f"reward.sources[{index}]" + (f".{key}" if key else "")
    return f"{where} (source {name!r}): {text}" if name else f"{where}: {text}"


def _build_entry(raw: Any, index: int) -> SourceConfig:
    """One ``reward.sources`` entry as its typed config; ``ValueError`` naming the entry."""
    if not isinstance(raw, dict):
        raise ValueError(f"reward.sources[{index}]: expected a mapping with a 'kind', got {short(raw)}")
    kind = raw.get("kind")
    label = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else ""
    if not label and kind in KINDS:  # the name the source will get
        label = str(raw.get("metric", "bleu")) if kind == "similarity" else kind
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(_entry_error(index, label, "kind", f"must be one of {', '.join(KINDS)}; got {kind!r}{hint}"))
    cls = KINDS[kind]
    hints = field_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys for kind {kind!r}: {', '.join(hints)}"
            raise ValueError(_entry_error(index, label, "", f"unknown key {key!r} ({hint})"))
        try:
            values[key] = coerce(value, hints[key], key)
        except ValueError as e:
            raise ValueError(_entry_error(index, label, key, str(e).split(": ", 1)[-1])) from None
    spec = cls(**values)
    if not spec.name:
        spec.name = spec.metric if isinstance(spec, SimilaritySourceConfig) else kind
    return spec


def _entry_errors(spec: SourceConfig, index: int) -> list[str]:
    errors = []

    def bad(key: str, text: str) -> None:
        errors.append(_entry_error(index, spec.name, key, text))

    if not _NAME.match(spec.name):
        bad("name", f"must be letters, digits, '_', '.' or '-' (it becomes a metric key), got {spec.name!r}")
    if not math.isfinite(spec.weight):
        bad("weight", f"must be a finite number, got {spec.weight!r}")
    for key, allowed in _ENUMS.items():
        if hasattr(spec, key) and getattr(spec, key) not in allowed:
            bad(key, f"must be one of {', '.join(allowed)}; got {getattr(spec, key)!r}")
    for key, op, bound in _BOUNDS:
        value = getattr(spec, key, None)
        if value is not None and not _OPS[op](value, bound):
            bad(key, f"must be {op} {bound:g}, got {value!r}")
    if isinstance(spec, ActorSourceConfig) and not spec.path.strip():
        bad("path", f"a {spec.kind} source needs the model's path (HF directory or hub id)")
    if isinstance(spec, JudgeSourceConfig) and spec.mode == "pointwise" and spec.score_min >= spec.score_max:
        bad("score_min", f"must be < score_max ({spec.score_max:g}), got {spec.score_min:g}")
    if isinstance(spec, JudgeSourceConfig) and spec.mode == "pointwise" and spec.verdict == "constrained":
        if not (float(spec.score_min).is_integer() and float(spec.score_max).is_integer()):
            bad("verdict", f"constrained pointwise verdicts are whole numbers, so score_min and score_max must be "
                           f"too; got {spec.score_min:g} and {spec.score_max:g}")
    if isinstance(spec, HttpSourceConfig):
        if not re.match(r"^https?://[^/\s]+", spec.url):
            bad("url", f"must be an http:// or https:// URL, got {spec.url!r}")
        if spec.token_env and spec.token_file:
            bad("token_file", "set token_env or token_file, not both")
    if isinstance(spec, RuleSourceConfig):
        module, _, attr = spec.function.partition(":")
        if spec.function != "builtin" and (not module.strip() or not attr.strip()):
            bad("function", f"must be 'builtin' or 'package.module:function', got {spec.function!r}")
    return errors


def source_configs(reward: RewardConfig) -> list[SourceConfig]:
    """The typed sources of ``reward``: its ``sources`` list, or the ``function`` shorthand as
    one rule source named ``rule``. Raises ``ValueError`` naming each bad entry."""
    if not reward.sources:
        return [RuleSourceConfig(kind="rule", name="rule", function=reward.function)]
    specs, errors = [], []
    for index, raw in enumerate(reward.sources):
        try:
            spec = _build_entry(raw, index)
        except ValueError as e:
            errors.append(str(e))
            continue
        errors += _entry_errors(spec, index)
        specs.append((index, spec))
    seen: dict[str, int] = {}
    for index, spec in specs:
        if spec.name in seen:
            errors.append(_entry_error(
                index, spec.name, "name",
                f"reward.sources[{seen[spec.name]}] has the same name; give each source its own 'name'",
            ))
        seen.setdefault(spec.name, index)
    if specs and all(spec.weight == 0 for _, spec in specs):
        errors.append("reward.sources: every source has weight 0, so no sample would get a reward")
    if errors:
        raise ValueError(errors[0] if len(errors) == 1 else "invalid reward sources:\n  - " + "\n  - ".join(errors))
    return [spec for _, spec in specs]


def reward_errors(cfg) -> list[str]:
    """Rules of the ``reward`` section."""
    rc = cfg.reward
    errors = []
    try:
        specs = source_configs(rc)
    except ValueError as e:
        return [str(e)]
    if rc.sources and rc.function != "builtin":
        errors.append(
            f"reward.function={rc.function!r} and reward.sources are both set: add the function "
            "to reward.sources as {kind: rule, function: ...} instead"
        )
    if rc.max_unscorable_steps < 0:
        errors.append(f"reward.max_unscorable_steps: must be >= 0 (0 never stops), got {rc.max_unscorable_steps}")
    placement = cfg.resources.placement
    for index, spec in enumerate(specs):
        if isinstance(spec, ActorSourceConfig) and spec.node_labels and placement != "disaggregated":
            errors.append(_entry_error(
                index, spec.name, "node_labels",
                "selects a node pool, which needs resources.placement='disaggregated'",
            ))
    server = rc.server
    if not 0 < server.port < 65536:
        errors.append(f"reward.server.port: must be within 1..65535, got {server.port}")
    if server.max_batch < 1:
        errors.append(f"reward.server.max_batch: must be >= 1, got {server.max_batch}")
    if not server.host.strip():
        errors.append("reward.server.host: must be a non-empty string")
    return errors


def actor_sources(reward: RewardConfig) -> list[ActorSourceConfig]:
    """The sources that run on actors of their own, in config order (placement reserves their
    bundles). An invalid list gives none here; validation reports it."""
    try:
        specs = source_configs(reward)
    except ValueError:
        return []
    return [s for s in specs if isinstance(s, ActorSourceConfig)]
