"""What counts as a fault, and remote calls that never wait forever.

A *fault* is a failure of the machinery rather than of the code: a process or node died, an
object was lost with its node, a call got no answer in time. Faults are recovered (an engine
replaced, the learner group restarted from its checkpoint); any other exception is a bug or a
bad input and ends the run with its own traceback, since running it again would fail the same
way.
"""

from __future__ import annotations

from typing import Any, Sequence

import ray
from ray import exceptions as rex

_FAULT_TYPES = (
    rex.RayActorError,  # ActorDiedError, ActorUnavailableError
    rex.GetTimeoutError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError, ...
    rex.WorkerCrashedError,
    rex.OutOfMemoryError,  # the node's memory monitor killed a worker
)


class CallTimeout(RuntimeError):
    """A remote call got no answer within its configured timeout."""


class PlacementTimeout(RuntimeError):
    """Actors could not start within ``resources.placement_timeout_s`` (plus their start-up
    time): the resources they wait for are named. Not a fault: restarting would wait again."""


class LearnerFailure(RuntimeError):
    """The learner group is broken: a rank died, hung, or lost its peers."""


def is_fault(exc: BaseException) -> bool:
    return isinstance(exc, (*_FAULT_TYPES, CallTimeout, LearnerFailure))


def actor_id(actor) -> str:
    return actor._actor_id.hex()


def died_here(exc: BaseException, actor) -> bool:
    """``exc`` says ``actor`` itself died (not an input it was handed, such as weights whose
    producer died: Ray reports those as the producer's death)."""
    return isinstance(exc, rex.RayActorError) and getattr(exc, "actor_id", None) == actor_id(actor)


def get(refs: Sequence[Any], timeout_s: float, what: str, field: str) -> list:
    """``ray.get(refs)`` that gives up after ``timeout_s`` with :class:`CallTimeout` naming the
    call and the config ``field`` that sets the limit. Fails as soon as any ref fails."""
    try:
        return ray.get(list(refs), timeout=timeout_s)
    except rex.GetTimeoutError:
        raise CallTimeout(f"{what}: no answer within {timeout_s:g} s ({field})") from None


def dead_among(refs: Sequence[Any], grace_s: float) -> list[BaseException]:
    """The deaths reported by ``refs`` within ``grace_s`` (the other calls of a collective
    whose first error may only be a symptom: a rank whose peer died)."""
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=grace_s)
    deaths = []
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except Exception as exc:  # noqa: BLE001 - sorting causes, not handling them
            if is_fault(exc):
                deaths.append(exc)
    return deaths


def summary(exc: BaseException) -> str:
    """One line saying what failed."""
    text = str(exc).strip().splitlines()
    line = next((t for t in text if "Error" in t or "died" in t.lower()), text[0] if text else "")
    return f"{type(exc).__name__}: {line.strip()[:300]}"
