"""Learner -> engine weight sync, verified on a fixed probe batch.

After a sync every engine scores the same probe sequences teacher-forced and the learner
scores them too; if any engine's mean absolute logprob difference exceeds
``rollout.probe_tolerance`` the step fails before any of that engine's samples are used. A
sync that silently did not take (a skipped call, a layer the engine failed to reload)
therefore cannot poison training.

The engines score the probe inside the next ``generate`` call, beside the real prompts: the
same weights that sample the batch are the ones checked, the probe's few tokens share the
batch's forward passes, and the sync itself is only gather, transfer and reload. The learner
scores the probe just before it gathers its weights for the engines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rollout_workers.types import ProbeBatch


class WeightSyncError(RuntimeError):
    pass


@dataclass
class PendingCheck:
    """A sync whose probe check is still due: the learner's scores are being computed."""

    version: int
    learner_refs: list[Any]


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


def check_engines(engine_scores: list[list[list[float]]], learner_scores: list[np.ndarray],
                  tolerance: float, version: int) -> float:
    """Largest engine-vs-learner mean |logprob difference|; raises above ``tolerance``."""
    worst = 0.0
    for engine_index, scores in enumerate(engine_scores):
        diff = probe_difference(scores, learner_scores)
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise WeightSyncError(
                f"rollout engine {engine_index} disagrees with the learner after weight sync to "
                f"policy version {version}: mean |logprob difference| on the probe batch is "
                f"{diff:.3g} > rollout.probe_tolerance={tolerance:g}. The engine is not running "
                f"the learner's weights; refusing to train on its samples."
            )
    return worst


def verify(learners, rollouts, probe: ProbeBatch, tolerance: float, version: int) -> float:
    """Check the engines now, with a separate scoring call (outside the step loop)."""
    learner_scores = learners.score(probe.prompt_ids, probe.response_ids)
    engine_scores = rollouts.score(probe.prompt_ids, probe.response_ids)
    return check_engines(engine_scores, learner_scores, tolerance, version)


def verify_engine(learners, engine, probe: ProbeBatch, tolerance: float, version: int, timeout_s: float) -> float:
    """Check one engine now (a replacement for a lost one) against the learner, which holds
    the weights last pushed whenever the engines are called."""
    from pipeline.infra import faults  # imports ray; sync itself is used without it

    learner_scores = learners.score(probe.prompt_ids, probe.response_ids)
    (engine_scores,) = faults.get([engine.score.remote(probe.prompt_ids, probe.response_ids)], timeout_s,
                                  "replaced rollout engine: probe scoring", "resources.engine_timeout_s")
    return check_engines([engine_scores], learner_scores, tolerance, version)


def sync(learners, rollouts, probe: ProbeBatch, version: int, check: bool) -> tuple[dict, PendingCheck | None]:
    """Push the learner's weights to every engine. With ``check``, also start the learner's
    probe scoring; the returned :class:`PendingCheck` is settled by :func:`settle` once the
    engines have scored the probe in their next ``generate``."""
    start = time.perf_counter()
    # The learner scores the probe first, then gathers: its actor runs calls in order and the
    # engines' reload waits for the gathered weights, so the reload never competes with that
    # forward for cores (on a shared CPU, overlapping them made the reload 3-4x slower).
    pending = PendingCheck(version, learners.score_refs(probe.prompt_ids, probe.response_ids)) if check else None
    state_ref = learners.policy_weights()
    gathered = time.perf_counter()
    load_seconds = rollouts.load_weights(state_ref, version)
    metrics = {
        "sync/seconds": time.perf_counter() - start,
        "sync/gather_seconds": gathered - start,
        "sync/load_seconds": load_seconds,
    }
    return metrics, pending


def settle(learners, pending: PendingCheck, engine_scores: list[list[list[float]]], engines: int,
           tolerance: float) -> dict:
    """Compare the probe scores of all ``engines`` (from their ``generate``) with the learner's;
    raises :class:`WeightSyncError` on a mismatch or a missing engine, else returns metrics."""
    start = time.perf_counter()
    if len(engine_scores) != engines:
        raise WeightSyncError(
            f"{len(engine_scores)} of {engines} rollout engines scored the probe after weight sync "
            f"to policy version {pending.version}; every engine must be checked"
        )
    learner_scores = learners.gather_scores(pending.learner_refs)
    diff = check_engines(engine_scores, learner_scores, tolerance, pending.version)
    return {"sync/probe_diff": diff, "sync/check_seconds": time.perf_counter() - start}
