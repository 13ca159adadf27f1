"""The learner group: N :class:`LearnerWorker` Ray actors forming one process group.

The driver hands over whole batches; the group splits them into contiguous per-rank shards
and concatenates results back in order, so callers never see ranks.

Every call waits at most ``resources.learner_timeout_s``. A rank that died (its process, its
node), a call that timed out, or an error in one rank while another died (a collective that
lost its peer) raises :class:`pipeline.infra.faults.LearnerFailure`: the process group cannot be
mended, so the driver restarts the whole group from its last checkpoint
(:mod:`pipeline.controller.recovery`). An error that all ranks raise with every rank alive is a bug and
propagates as it is.
"""

from __future__ import annotations

import numpy as np
import ray

from learners.batching import Samples, split_evenly
from learners.worker import LearnerWorker
from pipeline.config import RayppoConfig
from pipeline.infra import fault_injection, faults

# How long the other ranks' calls are given to report a death once one rank has failed.
_PEER_GRACE_S = 10.0
# A rank's process start (interpreter, torch imports) once its bundle is placed, on a busy node.
_START_S = 120.0


class LearnerGroup:
    def __init__(self, cfg: RayppoConfig, placement=None):
        """``placement``: a :class:`pipeline.controller.placement.Placement` whose learner bundles the
        ranks go to; ``None`` lets Ray place them anywhere (tests, single-process tools)."""
        self.cfg = cfg
        n = cfg.learner.num_ranks
        res = cfg.resources
        self.timeout = res.learner_timeout_s
        actor_cls = ray.remote(LearnerWorker)
        env = fault_injection.actor_env()
        self.workers = []
        for rank in range(n):
            if placement is not None:
                options = placement.options("learner", rank)
            else:
                options = dict(num_cpus=res.cpus_per_learner, num_gpus=res.gpus_per_learner)
            if env:
                options["runtime_env"] = {"env_vars": env}
            self.workers.append(actor_cls.options(**options).remote(cfg, rank, n))
        # Every rank answers once its bundle is placed (after a node loss, once the cluster has
        # a node for the lost bundles again).
        wait = res.placement_timeout_s + _START_S
        ready_refs = [w.__ray_ready__.remote() for w in self.workers]
        ready, _ = ray.wait(ready_refs, num_returns=n, timeout=wait)
        if len(ready) < n:
            rank = next(i for i, ref in enumerate(ready_refs) if ref not in ready)
            where = placement.describe("learner", rank) if placement is not None else f"rank {rank}"
            self.kill()
            raise faults.PlacementTimeout(
                f"learner group not started within {wait:g} s (resources.placement_timeout_s + "
                f"{_START_S:g} s to start a process): {where}"
            )
        self._get(ready_refs, "start")
        master_addr, master_port = self._get([self.workers[0].address.remote()], "rendezvous address")[0]
        infos = self._get([w.setup.remote(master_addr, master_port) for w in self.workers], "setup")
        self.info = infos[0]

    def _get(self, refs: list, what: str) -> list:
        """Results of one call on every rank; a lost rank raises :class:`LearnerFailure`."""
        try:
            return faults.get(refs, self.timeout, f"learner {what}", "resources.learner_timeout_s")
        except Exception as exc:  # noqa: BLE001 - sorted into lost rank or bug below
            if faults.is_fault(exc):
                raise faults.LearnerFailure(f"learner {what}: {faults.summary(exc)}") from exc
            deaths = faults.dead_among(refs, _PEER_GRACE_S)
            if deaths:
                raise faults.LearnerFailure(
                    f"learner {what}: a rank died ({faults.summary(deaths[0])}) and another failed with "
                    f"{faults.summary(exc)}"
                ) from exc
            raise

    def _shards(self, samples: Samples) -> list[Samples]:
        return [samples.subset(idx) for idx in split_evenly(len(samples), len(self.workers))]

    def compute(self, samples: Samples, need_old_logprobs: bool) -> dict[str, list[np.ndarray]]:
        """Old/reference logprobs and values per sample, in the batch's order."""
        parts = self._get(
            [w.compute.remote(s, need_old_logprobs) for w, s in zip(self.workers, self._shards(samples))], "compute"
        )
        merged: dict[str, list[np.ndarray]] = {}
        for part in parts:
            for key, values in part.items():
                merged.setdefault(key, []).extend(values)
        return merged

    def update(self, samples: Samples) -> dict[str, float]:
        results = self._get([w.update.remote(s) for w, s in zip(self.workers, self._shards(samples))], "update")
        return results[0]  # metrics are already all-reduced over ranks

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
        return self.gather_scores(self.score_refs(prompt_ids, response_ids))

    def score_refs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[ray.ObjectRef]:
        """Start :meth:`score` on every rank; :meth:`gather_scores` collects the result."""
        shards = self._shards(Samples(prompt_ids, response_ids, {}))
        return [w.score.remote(s.prompt_ids, s.response_ids) for w, s in zip(self.workers, shards)]

    def gather_scores(self, refs: list[ray.ObjectRef]) -> list[np.ndarray]:
        return [x for part in self._get(refs, "probe scoring") for x in part]

    def policy_weights(self) -> ray.ObjectRef:
        """An object-store reference to the full policy weights (gathered on rank 0), packed
        by :func:`pipeline.infra.weight_transport.pack`; ``unpack`` gives the state dict.

        Every rank must join the gather; only rank 0's (non-empty) result is kept, and it
        stays in the object store so engines fetch it without a copy through the driver.
        """
        refs = [w.packed_policy.remote() for w in self.workers]
        if len(refs) > 1:
            # The other ranks return once the gather is done (a death is reported here; rank
            # 0's would surface where the engines read its result).
            self._get(refs[1:], "weight gather")
        return refs[0]

    def save(self, directory: str, tokenizer_path: str) -> None:
        self._get([w.save.remote(directory, tokenizer_path) for w in self.workers], "save")

    def load(self, directory: str) -> None:
        self._get([w.load.remote(directory) for w in self.workers], "load")

    def shutdown(self) -> None:
        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
        except Exception:
            pass
        self.kill()

    def kill(self) -> None:
        """End every rank now, without a last call (a broken group may never answer one)."""
        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

