"""Learner -> engine weight sync, verified on a fixed probe batch.

After every sync each engine scores the same probe sequences teacher-forced, and the learner
scores them too; if any engine's mean absolute logprob difference exceeds
``rollout.probe_tolerance`` the step fails. A sync that silently did not take (a skipped
call, a layer the engine failed to reload) therefore cannot poison training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


class WeightSyncError(RuntimeError):
    pass


@dataclass
class ProbeBatch:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]


def make_probe(
    tokenizer, prompt_ids: list[list[int]], answers: list, size: int, max_tokens: int | None = None
) -> ProbeBatch:
    """Fixed probe: the first ``size`` prompts with their reference answer (or a stock reply),
    cut to ``max_tokens`` so probe sequences fit the engines' context like any completion."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompts, responses = [], []
    for ids, answer in list(zip(prompt_ids, answers))[:size]:
        text = str(answer) if answer is not None else "ok"
        prompts.append(list(ids))
        responses.append((tokenizer.encode(text, add_special_tokens=False) + eos)[:max_tokens])
    return ProbeBatch(prompts, responses)


def probe_difference(engine_scores: list[list[float]], learner_scores: list[np.ndarray]) -> float:
    """Mean |difference| over all probe tokens; missing or misshapen engine output is an error."""
    if len(engine_scores) != len(learner_scores):
        raise WeightSyncError(
            f"engine returned probe scores for {len(engine_scores)} sequences, expected {len(learner_scores)}"
        )
    for i, (e, l) in enumerate(zip(engine_scores, learner_scores)):
        if len(e) != len(l):
            raise WeightSyncError(
                f"engine returned {len(e)} probe logprobs for sequence {i}, expected {len(l)}"
            )
    diffs = [
        np.abs(np.asarray(e, dtype=np.float64) - np.asarray(l, dtype=np.float64))
        for e, l in zip(engine_scores, learner_scores)
    ]
    return float(np.mean(np.concatenate(diffs))) if diffs else 0.0


def verify(learners, rollouts, probe: ProbeBatch, tolerance: float, version: int,
           learner_scores: list[np.ndarray] | None = None) -> float:
    """Largest engine-vs-learner mean |logprob difference|; raises above ``tolerance``.
    ``learner_scores``: the learner's probe scores when already computed."""
    if learner_scores is None:
        learner_scores = learners.score(probe.prompt_ids, probe.response_ids)
    worst = 0.0
    for engine_index, engine_scores in enumerate(rollouts.score(probe.prompt_ids, probe.response_ids)):
        diff = probe_difference(engine_scores, learner_scores)
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise WeightSyncError(
                f"rollout engine {engine_index} disagrees with the learner after weight sync to "
                f"policy version {version}: mean |logprob difference| on the probe batch is "
                f"{diff:.3g} > rollout.probe_tolerance={tolerance:g}. The engine is not running "
                f"the learner's weights; refusing to train on its samples."
            )
    return worst


def sync(learners, rollouts, probe: ProbeBatch, tolerance: float, version: int, check: bool) -> dict:
    start = time.perf_counter()
    state_ref = learners.policy_weights()
    gathered = time.perf_counter()
    # The learner scores the probe (queued after its gather) while the engines reload.
    pending = learners.score_refs(probe.prompt_ids, probe.response_ids) if check else None
    load_seconds = rollouts.load_weights(state_ref, version)
    metrics = {
        "sync/seconds": time.perf_counter() - start,
        "sync/gather_seconds": gathered - start,
        "sync/load_seconds": load_seconds,
    }
    if check:
        learner_scores = learners.gather_scores(pending)
        metrics["sync/probe_diff"] = verify(learners, rollouts, probe, tolerance, version, learner_scores)
    return metrics
