"""Engine actors that are replaced when they die, and calls that survive the replacement.

Every call to an engine goes through :meth:`EnginePool.call`, which keeps what it takes to run
the call again: the method, its arguments and the weights the engine held when it was made.
:meth:`EnginePool.results` waits for calls (never longer than ``resources.engine_timeout_s``);
when an engine died, or hung past that timeout, the pool starts a new actor in the same
placement bundle, loads the weights last pushed, has the driver check them on the probe batch,
and runs only that engine's lost calls again with the same arguments. Sampling seeds are a
function of (seed, step, prompt position), so the replacement produces the samples the lost
engine would have.

An engine that dies while another engine's call is in flight is found when that call is
collected; one that dies idle, at its next call. Replacements are counted
(``faults/engine_restarts``); beyond ``resources.max_engine_restarts`` the run stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import ray

from pipeline.config import RayppoConfig
from pipeline.infra import faults


@dataclass
class Weights:
    """Weights pushed to the engines: an object-store reference and its policy version."""

    ref: Any
    version: int


@dataclass
class Call:
    """One engine's share of a request, with what it takes to run it again elsewhere."""

    index: int
    actor: Any
    method: str
    args: tuple
    weights: Optional[Weights]
    """What the engine held when the call was made (``None``: the weights of ``model.path``)."""
    offset: int = 0
    ref: Any = None
    restore: Any = None
    """A reload of the current weights queued after a rerun that needed older ones."""
    result: Any = None
    done: bool = False


class EnginePool:
    def __init__(self, cfg: RayppoConfig, start: Callable[[int], Any], count: int,
                 describe: Callable[[int], str] = lambda index: ""):
        """``start(index)`` creates the actor of slot ``index`` (in its placement bundle);
        ``describe(index)`` says where that bundle is, for errors."""
        res = cfg.resources
        self._start, self._describe = start, describe
        self.timeout = res.engine_timeout_s
        self.start_timeout = res.engine_timeout_s + res.placement_timeout_s
        self.max_restarts = res.max_engine_restarts
        self.restarts = 0
        self.recovery_seconds = 0.0
        self.weights: Optional[Weights] = None
        self.verify_replacement: Optional[Callable[[Any], None]] = None
        """Set by the driver: checks a replaced engine on the probe (raises on a mismatch)."""
        self.actors = [start(index) for index in range(count)]
        self._wait_started(range(count))

    # ------------------------------------------------------------------ calls
    def call(self, index: int, method: str, *args, offset: int = 0) -> Call:
        actor = self.actors[index]
        call = Call(index, actor, method, args, self.weights, offset)
        call.ref = getattr(actor, method).remote(*args)
        return call

    def results(self, calls: list[Call]) -> list:
        """Each call's result, in order; a call whose engine was lost runs again on its
        replacement. Application errors raised inside an engine propagate unchanged."""
        deadline = time.monotonic() + self.timeout
        out = []
        for call in calls:
            while not call.done:
                try:
                    call.result = ray.get(call.ref, timeout=max(0.0, deadline - time.monotonic()))
                    call.done = True
                except Exception as exc:  # noqa: BLE001 - sorted below: lost engine or not
                    if not self._lost(call, exc):
                        raise
                    call = self._rerun(call, exc)
                    deadline = time.monotonic() + self.timeout
            if call.restore is not None:
                self._get([call.restore], f"rollout engine {call.index}: weight reload")
            out.append(call.result)
        return out

    def load_weights(self, state_ref, version: int) -> list[float]:
        """Push weights to every engine (kept for replacements); per-engine load seconds."""
        self.weights = Weights(state_ref, version)
        return self.results([self.call(i, "load_weights", state_ref, version) for i in range(len(self.actors))])

    def _get(self, refs: list, what: str) -> list:
        return faults.get(refs, self.timeout, what, "resources.engine_timeout_s")

    # --------------------------------------------------------------- recovery
    def _lost(self, call: Call, exc: BaseException) -> bool:
        """The call's engine died or hung (a failed *input*, e.g. weights whose learner died,
        is not the engine's fault and propagates)."""
        return isinstance(exc, ray.exceptions.GetTimeoutError) or faults.died_here(exc, call.actor)

    def _rerun(self, call: Call, cause: BaseException) -> Call:
        if self.actors[call.index] is call.actor:  # not replaced yet by another lost call
            self._replace(call.index, cause)
        if call.method == "load_weights" and call.weights is self.weights:
            # The replacement already loaded exactly these weights.
            return Call(call.index, self.actors[call.index], call.method, call.args, call.weights,
                        call.offset, result=0.0, done=True)
        stale = call.weights is not None and call.weights is not self.weights
        actor = self.actors[call.index]
        if stale:  # a batch generated ahead was sampled by older weights: use those again
            actor.load_weights.remote(call.weights.ref, call.weights.version)
        rerun = Call(call.index, actor, call.method, call.args, call.weights, call.offset)
        rerun.ref = getattr(actor, call.method).remote(*call.args)
        if stale:
            rerun.restore = actor.load_weights.remote(self.weights.ref, self.weights.version)
        return rerun

    def _replace(self, index: int, cause: BaseException) -> None:
        """A new actor in slot ``index``'s bundle, holding the weights last pushed."""
        start = time.perf_counter()
        while True:
            self.restarts += 1
            if 0 <= self.max_restarts < self.restarts:
                raise RuntimeError(
                    f"rollout engine {index} was lost ({faults.summary(cause)}) after {self.restarts - 1} "
                    f"engine restart(s) in this run; resources.max_engine_restarts={self.max_restarts}: giving up"
                ) from cause
            print(f"fault: rollout engine {index} lost ({faults.summary(cause)}); "
                  f"starting a replacement (engine restart {self.restarts})", flush=True)
            ray.kill(self.actors[index], no_restart=True)
            self.actors[index] = self._start(index)
            try:
                self._wait_started([index])
                if self.weights is not None:
                    self._get([self.actors[index].load_weights.remote(self.weights.ref, self.weights.version)],
                              f"rollout engine {index}: weight load after restart")
                    if self.verify_replacement is not None:
                        self.verify_replacement(self.actors[index])
                break
            except Exception as exc:  # noqa: BLE001
                if not faults.died_here(exc, self.actors[index]):
                    raise  # a start that never got its resources is not retried (PlacementTimeout)
                cause = exc
        self.recovery_seconds += time.perf_counter() - start

    def _wait_started(self, indices) -> None:
        indices = list(indices)
        refs = [self.actors[i].version.remote() for i in indices]
        try:
            ray.get(refs, timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            where = "; ".join(filter(None, (self._describe(i) for i in indices)))
            raise faults.PlacementTimeout(
                f"rollout engine(s) {indices} not started within {self.start_timeout:g} s "
                f"(resources.placement_timeout_s + resources.engine_timeout_s)" + (f": {where}" if where else "")
            ) from None

    def metrics(self) -> dict[str, float]:
        return {"faults/engine_restarts": float(self.restarts),
                "faults/engine_recovery_seconds": self.recovery_seconds}

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
