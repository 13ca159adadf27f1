"""Rollout engines as Ray actors, and the driver-side handle that splits work among them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from pipeline import weight_transport
from pipeline.config import RayppoConfig
from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling


class RolloutWorker:
    """One generation engine; the thin layer a Ray actor needs around it."""

    def __init__(self, engine: str, model_path: str, keep_freed_memory: bool = False, **engine_kwargs):
        if keep_freed_memory and not torch.cuda.is_available():
            from pipeline.cpu_allocator import keep_freed_memory as apply

            apply()
        if engine == "vllm":
            from rollout_workers.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model_path, **engine_kwargs)
        elif engine == "hf":
            from rollout_workers.hf_engine import HFEngine

            self.engine = HFEngine(model_path, **engine_kwargs)
        else:
            raise ValueError(f"rollout.engine: unknown engine {engine!r} (expected 'vllm' or 'hf')")

    def generate(self, prompt_ids, sampling: Sampling, step: int, base_seed: int, offset: int,
                 probe: ProbeBatch | None = None) -> RolloutBatch:
        return self.engine.generate(prompt_ids, sampling, step, base_seed, offset, probe)

    def score(self, prompt_ids, response_ids) -> list[list[float]]:
        return self.engine.score(prompt_ids, response_ids)

    def load_weights(self, state_dict, version: int) -> float:
        """``state_dict``: packed by :mod:`pipeline.weight_transport`, or a plain state dict."""
        start = time.perf_counter()
        self.engine.load_weights(weight_transport.unpack(state_dict), version)
        return time.perf_counter() - start

    def version(self) -> int:
        return self.engine.version


def engine_kwargs(cfg: RayppoConfig) -> dict:
    rc = cfg.rollout
    return dict(
        seed=cfg.seed,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype="auto" if cfg.model.dtype == "auto" else cfg.model.dtype,
        max_model_len=cfg.data.max_prompt_tokens + rc.max_tokens + 8,
        tensor_parallel_size=rc.tensor_parallel_size,
        gpu_memory_utilization=rc.gpu_memory_utilization,
        kv_cache_gib=rc.kv_cache_gib,
        enforce_eager=rc.enforce_eager,
        torch_threads=rc.torch_threads,
    )


@dataclass
class Submitted:
    """A ``generate`` in flight on the engines: one result per engine that got work."""

    refs: list = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


class RolloutGroup:
    """Driver-side handle on ``rollout.num_workers`` engine actors."""

    def __init__(self, cfg: RayppoConfig, model_path: str, placement=None):
        """``placement``: a :class:`pipeline.placement.Placement` whose rollout bundles the
        engines go to; ``None`` lets Ray place them anywhere."""
        res, rc = cfg.resources, cfg.rollout
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if rc.tensor_parallel_size == 1 else {}
        actor_cls = ray.remote(RolloutWorker)
        kwargs = engine_kwargs(cfg)
        self.workers = []
        for index in range(rc.num_workers):
            if placement is not None:
                options = placement.options("rollout", index)
            else:
                options = dict(num_cpus=res.cpus_per_rollout_worker, num_gpus=res.gpus_per_rollout_worker)
            options["runtime_env"] = {"env_vars": env}
            self.workers.append(
                actor_cls.options(**options).remote(
                    rc.engine, model_path, res.cpu_keep_freed_memory, **kwargs
                )
            )
        ray.get([w.version.remote() for w in self.workers])  # surface start-up errors here
        self.base_seed = cfg.seed

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, step: int,
                 probe: ProbeBatch | None = None) -> RolloutBatch:
        """Split prompts evenly among engines; seeds depend on the prompt, not the engine.
        With ``probe``, every engine also scores it (``batch.probe_scores``, in engine order),
        even one that gets no prompts: each engine's weights must be checked."""
        return self.collect(self.submit(prompt_ids, sampling, step, probe))

    def submit(self, prompt_ids: list[list[int]], sampling: Sampling, step: int,
               probe: ProbeBatch | None = None) -> Submitted:
        """Start :meth:`generate` and return at once; :meth:`collect` waits for the batch.
        Each engine runs its calls in order, so a weight load issued after this call reaches
        the engine only once this batch is generated."""
        parts = np.array_split(np.arange(len(prompt_ids)), len(self.workers))
        submitted = Submitted()
        for worker, part in zip(self.workers, parts):
            if len(part) == 0 and probe is None:
                continue
            offset = int(part[0]) if len(part) else 0
            chunk = [prompt_ids[i] for i in part]
            submitted.refs.append(worker.generate.remote(chunk, sampling, step, self.base_seed, offset, probe))
            submitted.offsets.append(offset)
        return submitted

    @staticmethod
    def collect(submitted: Submitted) -> RolloutBatch:
        batch = RolloutBatch()
        for offset, part in zip(submitted.offsets, ray.get(submitted.refs)):
            batch.extend(part, offset)
            batch.policy_version = part.policy_version
        return batch

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[list[float]]]:
        """Every engine scores the same probe batch: each must be checked, not just one."""
        return ray.get([w.score.remote(prompt_ids, response_ids) for w in self.workers])

    def load_weights(self, state_ref, version: int) -> float:
        """Push weights (an object-store ref) to all engines; returns the slowest load time."""
        return max(ray.get([w.load_weights.remote(state_ref, version) for w in self.workers]))

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
