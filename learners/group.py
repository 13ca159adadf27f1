"""The learner group: N :class:`LearnerWorker` Ray actors forming one process group.

The driver hands over whole batches; the group splits them into contiguous per-rank shards
and concatenates results back in order, so callers never see ranks.
"""

from __future__ import annotations

import numpy as np
import ray

from learners.batching import Samples, split_evenly
from learners.worker import LearnerWorker
from pipeline.config import RayppoConfig


class LearnerGroup:
    def __init__(self, cfg: RayppoConfig, placement=None):
        """``placement``: a :class:`pipeline.placement.Placement` whose learner bundles the
        ranks go to; ``None`` lets Ray place them anywhere (tests, single-process tools)."""
        self.cfg = cfg
        n = cfg.learner.num_ranks
        res = cfg.resources
        actor_cls = ray.remote(LearnerWorker)
        self.workers = []
        for rank in range(n):
            if placement is not None:
                options = placement.options("learner", rank)
            else:
                options = dict(num_cpus=res.cpus_per_learner, num_gpus=res.gpus_per_learner)
            self.workers.append(actor_cls.options(**options).remote(cfg, rank, n))
        master_addr, master_port = ray.get(self.workers[0].address.remote())
        infos = ray.get([w.setup.remote(master_addr, master_port) for w in self.workers])
        self.info = infos[0]

    def _shards(self, samples: Samples) -> list[Samples]:
        return [samples.subset(idx) for idx in split_evenly(len(samples), len(self.workers))]

    def compute(self, samples: Samples, need_old_logprobs: bool) -> dict[str, list[np.ndarray]]:
        """Old/reference logprobs and values per sample, in the batch's order."""
        parts = ray.get(
            [w.compute.remote(s, need_old_logprobs) for w, s in zip(self.workers, self._shards(samples))]
        )
        merged: dict[str, list[np.ndarray]] = {}
        for part in parts:
            for key, values in part.items():
                merged.setdefault(key, []).extend(values)
        return merged

    def update(self, samples: Samples) -> dict[str, float]:
        results = ray.get([w.update.remote(s) for w, s in zip(self.workers, self._shards(samples))])
        return results[0]  # metrics are already all-reduced over ranks

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
        return self.gather_scores(self.score_refs(prompt_ids, response_ids))

    def score_refs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[ray.ObjectRef]:
        """Start :meth:`score` on every rank; :meth:`gather_scores` collects the result."""
        shards = self._shards(Samples(prompt_ids, response_ids, {}))
        return [w.score.remote(s.prompt_ids, s.response_ids) for w, s in zip(self.workers, shards)]

    @staticmethod
    def gather_scores(refs: list[ray.ObjectRef]) -> list[np.ndarray]:
        return [x for part in ray.get(refs) for x in part]

    def policy_weights(self) -> ray.ObjectRef:
        """An object-store reference to the full policy weights (gathered on rank 0), packed
        by :func:`pipeline.weight_transport.pack`; ``unpack`` gives the state dict.

        Every rank must join the gather; only rank 0's (non-empty) result is kept, and it
        stays in the object store so engines fetch it without a copy through the driver.
        """
        refs = [w.packed_policy.remote() for w in self.workers]
        if len(refs) > 1:
            ray.wait(refs[1:], num_returns=len(refs) - 1)
        return refs[0]

    def save(self, directory: str, tokenizer_path: str) -> None:
        ray.get([w.save.remote(directory, tokenizer_path) for w in self.workers])

    def load(self, directory: str) -> None:
        ray.get([w.load.remote(directory) for w in self.workers])

    def shutdown(self) -> None:
        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
        except Exception:
            pass
        for w in self.workers:
            ray.kill(w)

