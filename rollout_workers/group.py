"""Rollout engines as Ray actors, and the driver-side handle that splits work among them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from pipeline.config import RayppoConfig
from pipeline.infra import fault_injection, weight_transport
from rollout_workers.engine_pool import Call, EnginePool
from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling


class RolloutWorker:
    """One generation engine; the thin layer a Ray actor needs around it."""

    def __init__(self, engine: str, model_path: str, keep_freed_memory: bool = False, index: int = 0,
                 **engine_kwargs):
        self.index = index  # the engine's slot in its group (names it for fault injection)
        self.model_path = model_path
        self.trust_remote_code = engine_kwargs.get("trust_remote_code", False)
        self._conversations = None  # the multi-turn loop, built on first use
        if keep_freed_memory and not torch.cuda.is_available():
            from pipeline.infra.cpu_allocator import keep_freed_memory as apply

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
        batch = self.engine.generate(prompt_ids, sampling, step, base_seed, offset, probe)
        fault_injection.point("rollout.generate", engine=self.index, step=step)
        return batch

    def generate_conversations(self, rows, sampling: Sampling, step: int, base_seed: int, offset: int,
                               probe: ProbeBatch | None, env_factory, limits) -> RolloutBatch:
        """``sampling.n`` multi-turn conversations per row with ``env_factory``'s environment
        (:mod:`rollout_workers.conversation_loop`); the probe is scored beside them, as in ``generate``."""
        if self._conversations is None:
            from transformers import AutoTokenizer

            from rollout_workers.conversation_loop import ConversationLoop
            from rollout_workers.turn_tokens import TurnTokens

            tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
            self._conversations = ConversationLoop(self.engine, TurnTokens(tokenizer, self.model_path), env_factory, limits)
        return self._conversations.run(rows, sampling, step, base_seed, offset, probe)

    def score(self, prompt_ids, response_ids) -> list[list[float]]:
        return self.engine.score(prompt_ids, response_ids)

    def load_weights(self, state_dict, version: int) -> float:
        """``state_dict``: packed by :mod:`pipeline.infra.weight_transport`, or a plain state dict."""
        start = time.perf_counter()
        tensors = weight_transport.unpack(state_dict)
        fault_injection.point("rollout.load_weights", engine=self.index)
        self.engine.load_weights(tensors, version)
        return time.perf_counter() - start

    def version(self) -> int:
        return self.engine.version


def engine_kwargs(cfg: RayppoConfig) -> dict:
    rc = cfg.rollout
    # A multi-turn response holds every later turn, the environment's included.
    response_tokens = max(rc.max_tokens, cfg.env.max_tokens_per_conversation) if cfg.env.class_path else rc.max_tokens
    return dict(
        seed=cfg.seed,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype="auto" if cfg.model.dtype == "auto" else cfg.model.dtype,
        max_model_len=cfg.data.max_prompt_tokens + response_tokens + 8,
        tensor_parallel_size=rc.tensor_parallel_size,
        gpu_memory_utilization=rc.gpu_memory_utilization,
        kv_cache_gib=rc.kv_cache_gib,
        enforce_eager=rc.enforce_eager,
        torch_threads=rc.torch_threads,
    )


@dataclass
class Submitted:
    """A ``generate`` in flight on the engines: one call per engine that got work."""

    calls: list[Call] = field(default_factory=list)


class RolloutGroup:
    """Driver-side handle on ``rollout.num_workers`` engine actors. A lost engine is replaced
    and its share of a call runs again (:mod:`rollout_workers.engine_pool`)."""

    def __init__(self, cfg: RayppoConfig, model_path: str, placement=None):
        """``placement``: a :class:`pipeline.controller.placement.Placement` whose rollout bundles the
        engines go to; ``None`` lets Ray place them anywhere."""
        res, rc = cfg.resources, cfg.rollout
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if rc.tensor_parallel_size == 1 else {}
        env.update(fault_injection.actor_env())
        actor_cls = ray.remote(RolloutWorker)
        kwargs = engine_kwargs(cfg)

        def start(index: int):
            if placement is not None:
                options = placement.options("rollout", index)
            else:
                options = dict(num_cpus=res.cpus_per_rollout_worker, num_gpus=res.gpus_per_rollout_worker)
            options["runtime_env"] = {"env_vars": env}
            return actor_cls.options(**options).remote(
                rc.engine, model_path, res.cpu_keep_freed_memory, index=index, **kwargs
            )

        def describe(index: int) -> str:
            return placement.describe("rollout", index) if placement is not None else ""

        # Start-up errors surface here; a lost engine is replaced through the same ``start``.
        self.pool = EnginePool(cfg, start, rc.num_workers, describe)
        self.base_seed = cfg.seed

    @property
    def workers(self) -> list:
        """The engine actors now (a replaced engine's slot holds its replacement)."""
        return self.pool.actors

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
        return self._split(prompt_ids, probe, lambda chunk, offset: (
            "generate", chunk, sampling, step, self.base_seed, offset, probe))

    def submit_conversations(self, rows: list, sampling: Sampling, step: int, env_factory, limits,
                             probe: ProbeBatch | None = None) -> Submitted:
        """:meth:`submit` for multi-turn rollouts: ``rows`` are :class:`pipeline.data.PromptRow`
        split evenly among engines, each running its share's conversations on its own."""
        return self._split(rows, probe, lambda chunk, offset: (
            "generate_conversations", chunk, sampling, step, self.base_seed, offset, probe, env_factory, limits))

    def _split(self, items: list, probe: ProbeBatch | None, request) -> Submitted:
        """One call per engine on its contiguous share of ``items``; ``request(chunk, offset)``
        gives the method and its arguments."""
        parts = np.array_split(np.arange(len(items)), len(self.workers))
        submitted = Submitted()
        for index, part in enumerate(parts):
            if len(part) == 0 and probe is None:
                continue
            offset = int(part[0]) if len(part) else 0
            method, *args = request([items[i] for i in part], offset)
            submitted.calls.append(self.pool.call(index, method, *args, offset=offset))
        return submitted

    def collect(self, submitted: Submitted) -> RolloutBatch:
        batch = RolloutBatch()
        for call, part in zip(submitted.calls, self.pool.results(submitted.calls)):
            batch.extend(part, call.offset)
            batch.policy_version = part.policy_version
        return batch

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[list[float]]]:
        """Every engine scores the same probe batch: each must be checked, not just one."""
        calls = [self.pool.call(i, "score", prompt_ids, response_ids) for i in range(len(self.workers))]
        return self.pool.results(calls)

    def load_weights(self, state_ref, version: int) -> float:
        """Push weights (an object-store ref) to all engines; returns the slowest load time.
        The group keeps the reference: a replaced engine loads the same weights."""
        return max(self.pool.load_weights(state_ref, version))

    def fault_metrics(self) -> dict[str, float]:
        return self.pool.metrics()

    def shutdown(self) -> None:
        self.pool.shutdown()
