"""Reward sources behind one interface, and their weighted sum.

``reward.sources`` lists the sources (``rule``, ``model``, ``judge``, ``http``, ``similarity``;
settings in :mod:`pipeline.config.rewards`); ``reward.function`` alone is the one-rule
shorthand. :class:`RewardSet` builds and checks them all before anything heavy starts, starts
the actor-backed ones, and scores a batch in two halves: :meth:`RewardSet.submit` starts every
source at once (actors, HTTP requests and in-process rules each work on their own), and
:meth:`RewardSet.collect` waits for them and combines.

The total of a sample is ``sum(weight_i * score_i)`` over the sources whose weight is not 0. A
sample is unscorable (NaN: left out of the update, counted in ``reward/unscorable``) when any of
those sources could not score it; a source with weight 0 is scored and logged but never makes a
sample unscorable. Every source is also logged on its own: ``reward/<name>/mean``, ``/std``,
``/unscorable``, ``/seconds``, and the counts of why samples were unscorable. Training steps
in which no sample at all could be scored are counted (:mod:`pipeline.rewards.stall`);
``reward.max_unscorable_steps`` of them in a row end the run, naming each failing source's
first problem (:meth:`RewardSet.problems`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from pipeline.config.rewards import ACTOR_KINDS, RewardConfig, source_configs
from pipeline.rewards.base import ScoreRequest, SourceResult
from pipeline.rewards.rule import RewardFn, resolve_reward_fn, score_completions
from pipeline.rewards.stall import RewardStall, UnscorableSteps, source_problem

__all__ = [
    "PendingScores",
    "RewardConfig",
    "RewardSet",
    "RewardStall",
    "ScoreRequest",
    "SourceResult",
    "UnscorableSteps",
    "eval_reward_fn",
    "resolve_reward_fn",
    "score_completions",
    "weighted_sum",
]


def build_source(spec, index: int, cfg, tokenizer=None):
    """The source object of one typed config; ``ValueError`` for what can be checked without
    starting it (imports, files, tokens)."""
    if spec.kind == "rule":
        field_name = f"reward.sources[{index}].function" if cfg.reward.sources else "reward.function"
        from pipeline.rewards.rule import RuleSource

        return RuleSource(spec, cfg.data.task, tokenizer, field_name)
    if spec.kind == "similarity":
        from pipeline.rewards.similarity import SimilaritySource

        return SimilaritySource(spec)
    if spec.kind == "http":
        from pipeline.rewards.http import HttpSource, read_token

        return HttpSource(spec, read_token(spec, index))
    if spec.kind == "model":
        from pipeline.rewards.model import ModelSource, check_model_source

        check_model_source(spec, index)
        return ModelSource(spec)
    if spec.kind == "judge":
        from learners.models import model_dir_error
        from pipeline.rewards.judge import JudgeSource, load_template

        problem = model_dir_error(spec.path)
        if problem:
            raise ValueError(f"reward.sources[{index}].path (source {spec.name!r}): {problem}")
        return JudgeSource(spec, load_template(spec, index))
    raise ValueError(f"reward.sources[{index}].kind: unknown kind {spec.kind!r}")


def weighted_sum(weights: list[float], scores: list[np.ndarray]) -> np.ndarray:
    """``sum(w * s)`` over sources with ``w != 0``; NaN where any of them is NaN."""
    n = len(scores[0]) if scores else 0
    total = np.zeros(n, dtype=np.float64)
    for w, s in zip(weights, scores):
        if w != 0:
            total = total + w * np.asarray(s, dtype=np.float64)
    return total


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    return {
        f"{prefix}/mean": float(finite.mean()) if finite.size else float("nan"),
        f"{prefix}/std": float(finite.std()) if finite.size else float("nan"),
        f"{prefix}/unscorable": float(values.size - finite.size),
    }


@dataclass
class PendingScores:
    """A batch being scored by every source (from :meth:`RewardSet.submit`)."""

    n: int
    handles: list[Any] = field(default_factory=list)
    """One handle per source, in source order."""


class RewardSet:
    def __init__(self, sources: list):
        if not sources:
            raise ValueError("RewardSet: needs at least one source")
        self.sources = sources
        self.started = False
        self.last_results: list[SourceResult] = []
        """Each source's result of the latest :meth:`collect` (for :meth:`problems`)."""

    @classmethod
    def from_config(cls, cfg, tokenizer=None) -> "RewardSet":
        """Every source of ``cfg.reward``, checked (imports, files, tokens); no Ray.
        ``tokenizer`` (the policy's) is handed to rule functions that ask for it."""
        specs = source_configs(cfg.reward)
        return cls([build_source(spec, i, cfg, tokenizer) for i, spec in enumerate(specs)])

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def uses_actors(self) -> bool:
        return any(s.kind in ACTOR_KINDS for s in self.sources)

    def actors(self) -> dict[str, list]:
        """Source name -> its Ray actors (for the placement report)."""
        return {s.name: list(s.actors) for s in self.sources if s.actors}

    def start(self, placement=None) -> None:
        """Start the actor-backed sources, in ``placement``'s reward bundles when given."""
        self.launch(placement)
        self.wait_ready()

    def launch(self, placement=None) -> None:
        """Create the sources' actors and return at once: they load their models while the
        caller starts other roles. :meth:`wait_ready` then waits for them."""
        try:
            for source in self.sources:
                getattr(source, "launch", source.start)(placement)
        except BaseException:
            self.shutdown()
            raise

    def wait_ready(self) -> None:
        try:
            for source in self.sources:
                if hasattr(source, "wait_ready"):
                    source.wait_ready()
        except BaseException:
            self.shutdown()
            raise
        self.started = True

    def submit(self, request: ScoreRequest) -> PendingScores:
        """Start every source on ``request``; returns at once."""
        return PendingScores(len(request), [source.submit(request) for source in self.sources])

    def collect(self, pending: PendingScores) -> tuple[np.ndarray, dict[str, float]]:
        """Wait for every source: the weighted total per sample (NaN = unscorable) and the
        metrics ``reward/*`` and ``reward/<name>/*``."""
        results = self.collect_results(pending)
        self.last_results = results
        total = self.total(results)
        return total, self.metrics(total, results)

    def collect_results(self, pending: PendingScores) -> list[SourceResult]:
        """Each source's own result, in source order (evaluation and the server use these)."""
        return [s.collect(h) for s, h in zip(self.sources, pending.handles)]

    def total(self, results: list[SourceResult]) -> np.ndarray:
        return weighted_sum([s.weight for s in self.sources], [r.scores for r in results])

    def metrics(self, total: np.ndarray, results: list[SourceResult]) -> dict[str, float]:
        metrics = _stats("reward", total)
        for source, result in zip(self.sources, results):
            prefix = f"reward/{source.name}"
            metrics.update(_stats(prefix, result.scores))
            metrics[f"{prefix}/seconds"] = float(result.seconds)
            for reason, count in result.reasons.items():
                metrics[f"{prefix}/{reason}"] = float(count)
            for key, value in result.counters.items():
                metrics[f"{prefix}/{key}"] = float(value)
        return metrics

    def problems(self) -> list[str]:
        """One line per counted source (weight not 0) that could not score some sample of the
        latest :meth:`collect`: its reasons and its first problem (see :mod:`.stall`)."""
        return [
            source_problem(source.name, source.kind, result.reasons, result.first_problem)
            for source, result in zip(self.sources, self.last_results)
            if source.weight != 0 and result.reasons
        ]

    def score(self, request: ScoreRequest) -> tuple[np.ndarray, dict[str, float]]:
        return self.collect(self.submit(request))

    def shutdown(self) -> None:
        for source in self.sources:
            try:
                source.shutdown()
            except Exception:
                pass
        self.started = False


def eval_reward_fn(reward: RewardConfig, task: Optional[str]) -> Optional[RewardFn]:
    """The rule behind ``eval/accuracy``: ``reward.eval_function``, else ``reward.function``
    when it is the reward, else the task's verifier when there is a task; None without one."""
    if reward.eval_function:
        return resolve_reward_fn(reward.eval_function, task, "reward.eval_function")
    if not reward.sources:
        return resolve_reward_fn(reward.function, task)
    return resolve_reward_fn("builtin", task) if task is not None else None
