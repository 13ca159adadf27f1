"""``kind: model``: a sequence-classification reward model on Ray actors of its own.

The work is :class:`rollout_workers.reward_model.RewardModelScorer` (one per actor); this module
checks the settings before anything starts and turns its results into a source result.
"""

from __future__ import annotations

import os

from learners.models import model_dir_error
from pipeline.rewards.actors import ActorSource, fill_scores
from pipeline.rewards.base import ResultBuilder, ScoreRequest
from rollout_workers.reward_model import STATS_FILE, RewardModelScorer, read_stats


def check_model_source(spec, index: int) -> None:
    """Problems found without loading anything: the model directory and its stats file."""
    where = f"reward.sources[{index}].path (source {spec.name!r})"
    problem = model_dir_error(spec.path)
    if problem:
        raise ValueError(f"{where}: {problem}")
    if os.path.isdir(spec.path):
        try:
            stats = read_stats(spec.path)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if spec.normalize and stats is None:
            raise ValueError(
                f"reward.sources[{index}].normalize (source {spec.name!r}): true, but {spec.path} "
                f"has no {STATS_FILE}"
            )


class ModelSource(ActorSource):
    def actor_target(self):
        s = self.spec
        return RewardModelScorer, (s.path,), dict(
            batch_size=s.batch_size, max_length=s.max_length, normalize=s.normalize, dtype=s.dtype,
            trust_remote_code=s.trust_remote_code, torch_threads=s.torch_threads,
        )

    def payload(self, request: ScoreRequest, builder: ResultBuilder):
        return list(range(len(request))), request

    def call_args(self, request: ScoreRequest, positions: list[int]) -> tuple:
        return [request.messages[i] for i in positions], [request.completions[i] for i in positions]

    def apply(self, builder: ResultBuilder, samples: list[int], result: dict) -> float:
        fill_scores(builder, samples, result["scores"], what="the reward model returned ")
        if result.get("truncated"):
            builder.count("truncated", result["truncated"])
        return float(result.get("seconds", 0.0))
