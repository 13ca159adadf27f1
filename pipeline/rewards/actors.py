"""Sources served by Ray actors of their own (``model``, ``judge``): starting them in the run's
placement group, splitting a batch among them, and waiting with a deadline.

The actors are created from a recipe kept here (class, arguments, resources, bundle), so an
actor that died, or raised (an engine that failed once is not trusted again: vLLM's is dead
after an error), is recreated in place, in the same bundle, before the next batch. A chunk whose
actor died, raised or missed the deadline makes its samples unscorable (``actor_error``,
``timeout``); the step goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from pipeline.rewards.base import ResultBuilder, ScoreRequest, SourceResult

logger = logging.getLogger("pipeline.rewards")


def reward_role(name: str) -> str:
    """Placement role of a source's actors (one layout per source: their bundles differ)."""
    return f"reward:{name}"


@dataclass
class Pending:
    """One source's batch in flight."""

    n: int
    builder: ResultBuilder
    chunks: list[tuple[int, Any, list[int]]] = field(default_factory=list)
    """(actor index, object ref, sample indices) per actor call."""
    submitted: float = field(default_factory=time.monotonic)


class ActorSource:
    """Base of actor-backed sources. Subclasses implement :meth:`actor_target` (what each actor
    is built from), :meth:`payload` / :meth:`call_args` (what it is sent) and :meth:`apply`
    (how its reply becomes scores)."""

    method = "score"

    def __init__(self, spec):
        self.spec = spec
        self.kind, self.name, self.weight = spec.kind, spec.name, spec.weight
        self.actors: list = []
        self._options: list[dict] = []
        self._dead: set[int] = set()
        self.restarts = 0
        """Actors recreated after dying (``faults/reward_restarts``)."""

    # -------------------------------------------------------------- actors
    def actor_target(self):
        """(class, args, kwargs) each actor is built from."""
        raise NotImplementedError

    def start(self, placement=None) -> None:
        self.launch(placement)
        self.wait_ready()

    def launch(self, placement=None) -> None:
        """Create the actors and return at once (they load their models meanwhile)."""
        import ray

        cls, args, kwargs = self.actor_target()
        remote_cls = ray.remote(cls)
        spec = self.spec
        self._options = []
        for index in range(spec.num_actors):
            if placement is not None:
                options = placement.options(reward_role(self.name), index)
            else:
                options = {"num_cpus": spec.cpus, "num_gpus": spec.gpus}
            # One in-process vLLM engine core (as the rollout engines run), no subprocess.
            options["runtime_env"] = {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
            self._options.append(options)
        self._recipe = (remote_cls, args, kwargs)
        self.actors = [remote_cls.options(**o).remote(*args, **kwargs) for o in self._options]

    def wait_ready(self) -> None:
        """Wait until every actor has loaded its model; a failed start is an error here."""
        import ray

        try:
            ray.get([a.__ray_ready__.remote() for a in self.actors], timeout=max(600.0, self.spec.timeout_s))
        except Exception as e:
            self.shutdown()
            raise RuntimeError(f"reward source {self.name!r}: its actors failed to start ({type(e).__name__}: {e})") from e

    def restart(self, index: int) -> None:
        """Replace actor ``index`` with a fresh one in the same bundle (same resources)."""
        import ray

        remote_cls, args, kwargs = self._recipe
        try:
            ray.kill(self.actors[index])
        except Exception:
            pass
        self.actors[index] = remote_cls.options(**self._options[index]).remote(*args, **kwargs)
        self._dead.discard(index)
        self.restarts += 1

    # ---------------------------------------------------------------- work
    def payload(self, request: ScoreRequest, builder: ResultBuilder) -> tuple[list[int], Any]:
        """(indices of the samples to send, the argument list for them); samples not sent must
        already be marked unscorable on ``builder``."""
        raise NotImplementedError

    def call_args(self, payload: Any, indices: list[int]) -> tuple:
        """Arguments of one actor call for the chunk ``indices`` (positions in ``payload``)."""
        raise NotImplementedError

    def apply(self, builder: ResultBuilder, samples: list[int], result: dict) -> float:
        """Write one actor result into ``builder``; returns the actor's seconds."""
        raise NotImplementedError

    def submit(self, request: ScoreRequest) -> Pending:
        for index in sorted(self._dead):
            self.restart(index)
        builder = ResultBuilder(len(request))
        samples, payload = self.payload(request, builder)
        pending = Pending(len(request), builder)
        parts = np.array_split(np.arange(len(samples)), len(self.actors))
        for index, (actor, part) in enumerate(zip(self.actors, parts)):
            if len(part) == 0:
                continue
            positions = [int(p) for p in part]
            ref = getattr(actor, self.method).remote(*self.call_args(payload, positions))
            pending.chunks.append((index, ref, [samples[p] for p in positions]))
        return pending

    def collect(self, pending: Pending) -> SourceResult:
        import ray

        builder, seconds = pending.builder, 0.0
        refs = [ref for _, ref, _ in pending.chunks]
        remaining = max(0.0, pending.submitted + self.spec.timeout_s - time.monotonic())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=remaining) if refs else ([], [])
        ready = set(ready)
        for index, ref, samples in pending.chunks:
            if ref not in ready:
                try:
                    ray.cancel(ref, force=False)  # drops it if still queued behind other work
                except Exception:
                    pass
                for i in samples:
                    builder.fail(i, "timeout", f"got no score within timeout_s={self.spec.timeout_s:g}")
                continue
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._dead.add(index)
                self._fail(builder, samples, f"lost its actor ({type(e).__name__})")
                continue
            except Exception as e:  # the actor raised while scoring
                self._dead.add(index)
                cause = getattr(e, "cause", None) or e  # RayTaskError wraps the actor's exception
                self._fail(builder, samples, f"actor raised {type(cause).__name__}: {str(cause)[-300:]}")
                continue
            seconds = max(seconds, self.apply(builder, samples, result))
        out = builder.result(seconds)
        if out.reasons:
            logger.warning("reward source %r could not score %d of %d samples %s; first: %s",
                           self.name, out.unscorable_count, pending.n, out.reasons, out.first_problem)
        return out

    @staticmethod
    def _fail(builder: ResultBuilder, samples: list[int], problem: str) -> None:
        for i in samples:
            builder.fail(i, "actor_error", problem)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.actors = []


def fill_scores(builder: ResultBuilder, samples: list[int], scores: list[Optional[float]],
                reasons: Optional[list[Optional[str]]] = None, what: str = "") -> None:
    """Copy an actor's per-sample scores (None = unscorable, with its reason) into ``builder``."""
    for k, (i, value) in enumerate(zip(samples, scores)):
        if value is None or not np.isfinite(value):
            reason = (reasons[k] if reasons else None) or "not_finite"
            builder.fail(i, reason, f"{what}{reason}")
        else:
            builder.set(i, float(value))
