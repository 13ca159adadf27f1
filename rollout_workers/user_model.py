"""The LLM user's engine (``env.user``): a model that writes the user's messages of
:class:`pipeline.envs.users.LLMUserEnv`, served by its own actor and never trained. The
controller starts it before the run's first conversation, as it starts reward actors; the
environment finds it by name (:func:`pipeline.envs.users.server_name`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from typing import Any, Optional

from pipeline.config.envs import UserConfig
from pipeline.data import token_ids
from pipeline.envs.users import server_name
from rollout_workers.types import Sampling


class UserModel:
    """The user model and its tokenizer: conversations in, next user messages out (plain
    class; :class:`UserModelServer` makes it an actor)."""

    def __init__(self, user: UserConfig):
        from transformers import AutoTokenizer

        if not user.model_path:
            raise ValueError("env.user.model_path: the LLM user needs a model (an HF directory or hub id)")
        self.cfg = user
        self.tokenizer = AutoTokenizer.from_pretrained(user.model_path, trust_remote_code=user.trust_remote_code)
        engine_kwargs = dict(seed=user.seed, trust_remote_code=user.trust_remote_code, dtype=user.dtype,
                             torch_threads=user.torch_threads)
        if user.engine == "vllm":
            from rollout_workers.vllm_engine import VLLMEngine  # the engines import torch

            self.engine = VLLMEngine(
                user.model_path, max_model_len=user.max_model_len, kv_cache_gib=user.kv_cache_gib,
                gpu_memory_utilization=user.gpu_memory_utilization, **engine_kwargs,
            )
        else:
            from rollout_workers.hf_engine import HFEngine

            self.engine = HFEngine(user.model_path, **engine_kwargs)

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        budget = self.cfg.max_model_len - self.cfg.max_tokens
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = list(messages[len(system):])
        while True:
            encoded = self.tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, tokenize=True)
            ids = token_ids(encoded, "env.user")
            if len(ids) <= budget:
                return ids
            if len(turns) <= 1:
                raise ValueError(
                    f"env.user: the conversation needs {len(ids)} tokens, more than env.user.max_model_len "
                    f"({self.cfg.max_model_len}) minus env.user.max_tokens ({self.cfg.max_tokens})"
                )
            turns = turns[1:]  # the oldest turns go first; the persona stays

    def reply(self, requests: list[tuple[list[dict], int]]) -> list[Any]:
        """The next user message (str) for each ``(user_view messages, seed)``, or the
        exception that request raised."""
        prompts: list[Any] = []
        for messages, _ in requests:
            try:
                prompts.append(self._prompt_ids(messages))
            except ValueError as e:
                prompts.append(e)
        ready = [i for i, p in enumerate(prompts) if not isinstance(p, Exception)]
        texts = self._generate([prompts[i] for i in ready], [requests[i][1] for i in ready])
        out: list[Any] = list(prompts)
        for i, text in zip(ready, texts):
            out[i] = text
        return out

    def _generate(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[str]:
        if not prompt_ids:
            return []
        cfg = self.cfg
        if cfg.engine == "vllm":
            from vllm import SamplingParams

            params = [SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                     seed=seed, detokenize=False) for seed in seeds]
            outputs = self.engine.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
            tokens = [list(o.outputs[0].token_ids) for o in outputs]
        else:
            sampling = Sampling(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
            tokens = [self.engine.generate([p], sampling, step=0, base_seed=seed).response_ids[0]
                      for p, seed in zip(prompt_ids, seeds)]
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


class UserModelServer:
    """Ray actor around :class:`UserModel`. Requests that arrive while the engine is busy are
    answered together in its next call, so concurrent conversations share forward passes.
    The engine lives on one dedicated thread; the actor's event loop only queues."""

    def __init__(self, user: dict, model: Optional["UserModel"] = None):
        self._engine_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rayppo-user-engine")
        # ``model``: anything with UserModel's ``reply``; None builds the engine on its thread.
        self.model = model or self._engine_thread.submit(UserModel, UserConfig(**user)).result()
        self._pending: list[tuple[list[dict], int, asyncio.Future]] = []
        self._flusher: Optional[asyncio.Task] = None
        self._arrived = 0
        self._calls: list[tuple[int, int]] = []

    def ready(self) -> bool:
        return True

    def engine_calls(self) -> list[tuple[int, int]]:
        """``(requests arrived so far, requests it served)`` for each engine call so far, in
        order. Each call serves every request that arrived since the previous call started."""
        return list(self._calls)

    async def reply(self, messages: list[dict], seed: int) -> str:
        self._arrived += 1
        future = asyncio.get_running_loop().create_future()
        self._pending.append((messages, seed, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(0)  # requests sent together arrive in the same batch
            batch, self._pending = self._pending, []
            self._calls.append((self._arrived, len(batch)))
            try:
                texts = await loop.run_in_executor(self._engine_thread, self.model.reply, [(m, s) for m, s, _ in batch])
            except Exception as e:  # noqa: BLE001 - the engine failed: every waiting request fails
                texts = [e] * len(batch)
            for (_, _, future), text in zip(batch, texts):
                if isinstance(text, Exception):
                    future.set_exception(text)
                else:
                    future.set_result(text)


_servers: dict[str, Any] = {}


def user_server(user: UserConfig, placement: Any = None) -> Any:
    """The user engine actor for ``user``: found by name when it runs, started otherwise."""
    import ray

    name = server_name(user)
    if name in _servers:
        return _servers[name]
    try:
        handle = ray.get_actor(name)
    except ValueError:
        options: dict[str, Any] = dict(num_cpus=user.num_cpus, num_gpus=user.num_gpus)
        if placement is not None and "user" in getattr(placement, "groups", {}):
            options = placement.options("user", 0)
        options["runtime_env"] = {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
        handle = ray.remote(UserModelServer).options(name=name, get_if_exists=True, **options).remote(dataclasses.asdict(user))
    _servers[name] = handle
    return handle


def start_user_server(user: UserConfig, placement: Any = None) -> Any:
    """Start the user engine (or find it running) and wait until it has loaded
    (``env.user.start_timeout_s``)."""
    import ray

    handle = user_server(user, placement)
    try:
        ray.get(handle.ready.remote(), timeout=user.start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            f"env.user: the user engine for {user.model_path!r} did not start within "
            f"env.user.start_timeout_s={user.start_timeout_s} (not enough free CPUs/GPUs for "
            f"env.user.num_cpus={user.num_cpus}, num_gpus={user.num_gpus}?)"
        ) from None
    return handle


def stop_user_servers() -> None:
    """Kill the user engines this process started or found."""
    import ray

    for name, handle in list(_servers.items()):
        ray.kill(handle)
        del _servers[name]
