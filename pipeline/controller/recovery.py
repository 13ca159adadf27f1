"""The run goes on after its learner group fails: restart from the last committed checkpoint.

A learner rank that dies takes the process group with it (its peers' collectives can only
fail or hang), so the unit of recovery is the whole group: the driver kills every rank,
starts a new group in the same placement bundles (after a node loss, once the cluster has a
node for them again; or fails after ``resources.placement_timeout_s`` with what it waits
for), loads the last committed checkpoint (the start of the run when there is none yet),
restores the driver's state from it, hands the engines its weights, and continues. Steps after
the checkpoint are run again with the same seeds, so they reproduce what the lost attempt
computed, and their lines in ``metrics.jsonl`` are replaced, never duplicated.

``resources.max_failures`` bounds the failures recovered per driver process, as Ray Train's
``FailureConfig.max_failures`` bounds a run's (0: none, -1: no limit). Only faults are
recovered (:func:`pipeline.infra.faults.is_fault`); a bug would fail again the same way.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from pipeline.infra import faults

# Restart attempts of one failure, and the wait before each retry (doubling).
_ATTEMPTS = 4
_BACKOFF_S = 2.0
_MAX_BACKOFF_S = 30.0


class Recovery:
    def __init__(self, trainer) -> None:
        """``trainer``: the :class:`pipeline.stages.train.Trainer` whose learner group this guards
        (its ``restart_learners()`` does the work)."""
        self.trainer = trainer
        self.limit = trainer.cfg.resources.max_failures
        self.failures = 0
        self.seconds = 0.0

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the body; on a fault, restart the learner group and return normally (the caller's
        loop continues from the restored step). Other exceptions pass through."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - faults are handled, the rest re-raised
            if not faults.is_fault(exc):
                raise
            self._recover(exc)

    def _recover(self, cause: BaseException) -> None:
        self.failures += 1
        if 0 <= self.limit < self.failures:
            raise RuntimeError(
                f"learner group failed ({faults.summary(cause)}) after {self.failures - 1} recovered "
                f"failure(s) in this run; resources.max_failures={self.limit}: giving up"
            ) from cause
        limit = "no limit" if self.limit < 0 else f"resources.max_failures={self.limit}"
        print(f"fault: {faults.summary(cause)}; restarting the learner group from the last "
              f"checkpoint (failure {self.failures}, {limit})", flush=True)
        start = time.perf_counter()
        for attempt in range(1, _ATTEMPTS + 1):
            began = time.perf_counter()
            try:
                restored = self.trainer.restart_learners()
            except Exception as exc:  # noqa: BLE001
                if not faults.is_fault(exc):
                    raise
                if attempt == _ATTEMPTS:
                    raise RuntimeError(
                        f"learner group could not be restarted in {_ATTEMPTS} attempts "
                        f"(last: {faults.summary(exc)})"
                    ) from exc
                # Right after a node loss a new rank can land on a bundle Ray has not yet moved
                # off the dead node; the same failure, so it is retried, not counted again.
                wait = min(_MAX_BACKOFF_S, _BACKOFF_S * 2 ** (attempt - 1))
                print(f"fault: restart attempt {attempt} failed ({faults.summary(exc)}); "
                      f"next attempt in {wait:g} s", flush=True)
                time.sleep(wait)
                continue
            finally:
                self.seconds += time.perf_counter() - began
            print(f"recovered in {time.perf_counter() - start:.1f} s: continuing after step "
                  f"{self.trainer.step_index} ({restored or 'no checkpoint yet: from the start'})", flush=True)
            return

    def metrics(self) -> dict[str, float]:
        return {"faults/learner_restarts": float(self.failures),
                "faults/learner_recovery_seconds": self.seconds}
