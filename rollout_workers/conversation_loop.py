"""Multi-turn rollouts inside an engine actor: every conversation advances on its own.

Each conversation is a coroutine: reset the environment, then repeat "generate one assistant
turn, step the environment, append its message" until the environment ends it or a limit
does. The engine runs on one thread of its own and never waits for an environment: when a
turn ends, the engine goes on with every other conversation's turn while that environment
step runs (on the environment's threads, or awaited when it is ``async``), and the next turn
is added to the engine the moment the step returns. So there is no lockstep in which the
whole batch waits for its slowest conversation's turn; :meth:`ConversationLoop.run` with
``lockstep=True`` is that baseline, kept for ``benchmarks/multiturn.py``.

Engines take part through four methods (:class:`TurnEngine`): vLLM adds each turn as a request
to the ``LLMEngine`` it already holds and steps it (continuous batching: turns join and leave
the running batch at any step); the transformers engine generates one pending turn per step.

A trajectory is one token sequence (:mod:`rollout_workers.turn_tokens`): assistant tokens are
the engine's own ids with its logprobs and loss mask 1; the environment's messages and the
template's markers around them are appended with mask 0 and logprob 0. Sampling seeds depend
on the step, the conversation's position in the batch and the turn
(:func:`rollout_workers.types.turn_seed`), never on timing, so a rerun or a resumed run samples
the same conversations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from pipeline.envs.base import step_all
from rollout_workers.turn_tokens import TurnTokens
from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling, TurnOutput, sample_seed, turn_seed


class TurnEngine(Protocol):
    """What the loop needs from an engine. All of it runs on the loop's engine thread."""

    def add_turn(self, key: str, prompt_ids: list[int], sampling: Sampling, seed: int) -> None: ...

    def add_probe(self, key: str, prompt_ids: list[int], response_ids: list[int]) -> None: ...

    def step_turns(self) -> list[TurnOutput]: ...

    def has_turns(self) -> bool: ...

    def abort_turns(self, keys: list[str]) -> None: ...


@dataclass
class Limits:
    """Conversation limits (``env.*``), and the longest opening the engine accepts."""

    max_turns: int
    max_tokens_per_turn: int
    max_tokens_per_conversation: int
    max_prompt_tokens: int

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        env = cfg.env
        return cls(env.max_turns, env.max_tokens_per_turn, env.max_tokens_per_conversation, cfg.data.max_prompt_tokens)


class EngineDriver:
    """Runs the engine on one thread; conversations await their turns' outputs.

    Requests wait in a queue until the engine thread is free; each engine step first adds
    them, then steps, so the engine is never touched by two threads at once.
    """

    def __init__(self, engine: TurnEngine):
        self.engine = engine
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rayppo-engine")
        self._queued: list[Callable[[], None]] = []
        self._waiting: dict[str, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._failure: Optional[BaseException] = None
        self.engine_steps = 0

    def submit(self, key: str, add: Callable[[], None]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        self._waiting[key] = future
        self._queued.append(add)
        self._wake.set()
        return future

    def _step(self, adds: list[Callable[[], None]]) -> list[TurnOutput]:
        for add in adds:
            add()
        if not self.engine.has_turns():
            raise RuntimeError(f"the engine has no request left for {len(self._waiting)} waiting turn(s)")
        return self.engine.step_turns()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._queued or self._waiting:
                adds, self._queued = self._queued, []
                try:
                    outputs = await loop.run_in_executor(self._thread, self._step, adds)
                except BaseException as e:  # the engine failed: every waiting turn fails with it
                    self._failure = e
                    for future in self._waiting.values():
                        if not future.done():
                            future.set_exception(e)
                    self._waiting.clear()
                    raise
                self.engine_steps += 1
                for out in outputs:
                    future = self._waiting.pop(out.key, None)
                    if future is not None and not future.done():
                        future.set_result(out)
                await asyncio.sleep(0)  # let the conversations whose turn ended queue the next
            elif self._stopping:
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def close(self) -> None:
        """After a failure, requests still in the engine are dropped so the next call starts clean."""
        if self._waiting:
            keys = list(self._waiting)
            self._waiting.clear()
            try:
                self._thread.submit(self.engine.abort_turns, keys).result()
            except Exception:  # noqa: BLE001 - a broken engine: the failure already propagating says why
                pass
        self._thread.shutdown(wait=True)


class EnvStepper:
    """Environment steps whose turns ended in the same engine step go out together, so an
    environment with ``step_batch`` gets them in one call (:func:`pipeline.envs.base.step_all`)."""

    def __init__(self):
        self._pending: list[tuple[Any, str, bool, asyncio.Future]] = []

    async def step(self, session, reply: str, final: bool):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((session, reply, final, future))
        if len(self._pending) == 1:
            # Runs after every conversation woken by the same engine step has queued its step.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(step_all([(s, r) for s, r, _, _ in batch], [f for _, _, f, _ in batch]))

        def deliver(done: asyncio.Future) -> None:
            for i, (*_, future) in enumerate(batch):
                if done.exception() is not None:
                    future.set_exception(done.exception())
                else:
                    future.set_result(done.result()[i])

        task.add_done_callback(deliver)


class Trajectory:
    """One conversation as the learner sees it: the opening as prompt, the rest as response."""

    def __init__(self, prompt_ids: list[int]):
        self.prompt_ids = list(prompt_ids)
        self.response_ids: list[int] = []
        self.logprobs: list[float] = []
        self.loss_mask: list[int] = []
        self.turn_ends: list[int] = []

    def context(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    def add_assistant(self, token_ids: list[int], logprobs: list[float]) -> None:
        if len(token_ids) != len(logprobs) or not token_ids:
            raise ValueError(f"an assistant turn needs one logprob per token, got {len(token_ids)} tokens "
                             f"and {len(logprobs)} logprobs")
        self.response_ids += token_ids
        self.logprobs += [float(x) for x in logprobs]
        self.loss_mask += [1] * len(token_ids)
        self.turn_ends.append(len(self.response_ids) - 1)

    def add_environment(self, token_ids: list[int]) -> None:
        self.response_ids += token_ids
        self.logprobs += [0.0] * len(token_ids)
        self.loss_mask += [0] * len(token_ids)


class ConversationState:
    """One conversation's state between engine and environment."""

    def __init__(self, index: int, row_index: int, row, session, env_seed: int):
        self.index = index  # position in the step's batch: prompt position x n + sample
        self.row_index = row_index
        self.row = row
        self.session = session
        self.env_seed = env_seed
        self.trajectory = Trajectory([])
        self.active = True
        self.truncated = False
        self.error: Optional[str] = None

    @property
    def turn(self) -> int:
        return len(self.trajectory.turn_ends)

    def fail(self, error: str) -> None:
        self.error, self.active = error, False


class ConversationLoop:
    """Runs a batch of conversations on one engine with one environment factory."""

    def __init__(self, engine: TurnEngine, tokens: TurnTokens, factory, limits: Limits,
                 turn_limit: Optional[Callable[[int, int], int]] = None):
        """``turn_limit(conversation, turn)``: that turn's token limit, when it should differ
        from ``limits.max_tokens_per_turn`` (benchmarks with turns of varied lengths)."""
        self.engine = engine
        self.tokens = tokens
        self.factory = factory
        self.limits = limits
        self.turn_limit = turn_limit
        self.tokenizer = tokens.tokenizer
        # The least an environment message takes: its turn markers, plus one generated token.
        self._min_message = len(tokens.message({"role": "user", "content": ""})) + 1
        self.engine_steps = 0

    def run(self, rows: list, sampling: Sampling, step: int, base_seed: int, offset: int = 0,
            probe: ProbeBatch | None = None, lockstep: bool = False) -> RolloutBatch:
        """``sampling.n`` conversations per row, in row order; ``offset`` is the first row's
        position in the step's batch (seeds depend on it, not on the engine)."""
        return asyncio.run(self._run(rows, sampling, step, base_seed, offset, probe, lockstep))

    async def _run(self, rows, sampling, step, base_seed, offset, probe, lockstep) -> RolloutBatch:
        driver = EngineDriver(self.engine)
        engine_task = asyncio.ensure_future(driver.run())
        stepper = EnvStepper()
        conversations = [
            ConversationState((offset + i) * sampling.n + j, i, row, self.factory.make(),
                         sample_seed(base_seed, step, offset + i))
            for i, row in enumerate(rows)
            for j in range(sampling.n)
        ]
        try:
            probe_scores = self._probe(driver, probe)
            play = self._lockstep(driver, conversations, sampling, step, base_seed) if lockstep else \
                asyncio.gather(*(self._converse(driver, stepper, c, sampling, step, base_seed) for c in conversations))
            # An engine failure reaches every waiting turn as its exception.
            results = await asyncio.gather(probe_scores, play)
        finally:
            driver.stop()
            await asyncio.wait([engine_task])
            driver.close()
        self.engine_steps = driver.engine_steps
        batch = self._batch(conversations, getattr(self.engine, "version", 0))
        if probe is not None:
            batch.probe_scores = [results[0]]
        return batch

    async def _probe(self, driver: EngineDriver, probe: ProbeBatch | None) -> list[list[float]]:
        if probe is None:
            return []
        futures = [
            driver.submit(f"probe-{i}", lambda i=i, p=p, r=r: self.engine.add_probe(f"probe-{i}", p, r))
            for i, (p, r) in enumerate(zip(probe.prompt_ids, probe.response_ids))
        ]
        return [out.logprobs for out in await asyncio.gather(*futures)]

    # ---------------------------------------------------------------- one conversation
    async def _open(self, c: ConversationState) -> None:
        opening = await c.session.areset(c.row, c.env_seed)
        c.trajectory = Trajectory(self.tokens.opening(opening))
        if c.session.unscorable:
            c.fail(c.session.error)
        elif len(c.trajectory.prompt_ids) > self.limits.max_prompt_tokens:
            c.fail(f"{c.row.source}: the opening has {len(c.trajectory.prompt_ids)} tokens, more than "
                   f"data.max_prompt_tokens={self.limits.max_prompt_tokens}")

    def _generate(self, driver: EngineDriver, c: ConversationState, sampling: Sampling, step: int,
                  base_seed: int) -> asyncio.Future:
        room = self.limits.max_tokens_per_conversation - len(c.trajectory.response_ids)
        per_turn = self.turn_limit(c.index, c.turn) if self.turn_limit else self.limits.max_tokens_per_turn
        turn_sampling = Sampling(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=max(1, min(per_turn, room)), ignore_eos=sampling.ignore_eos)
        key = f"c{c.index}-t{c.turn}"
        seed = turn_seed(base_seed, step, c.index, c.turn)
        context = c.trajectory.context()
        return driver.submit(key, lambda: self.engine.add_turn(key, context, turn_sampling, seed))

    def _take_turn(self, c: ConversationState, out: TurnOutput) -> tuple[str, bool]:
        """Append the engine's turn; the reply text and whether it must be the last turn."""
        c.trajectory.add_assistant(out.token_ids, out.logprobs)
        closing = self.tokens.close_turn(out.token_ids)
        room = self.limits.max_tokens_per_conversation - len(c.trajectory.response_ids) - len(closing)
        reply = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        return reply, room < self._min_message

    def _take_step(self, c: ConversationState, out: TurnOutput, result) -> None:
        """Append the environment's message, or end the conversation."""
        if result.unscorable:
            c.fail(result.error)
            return
        if result.done:
            c.truncated = result.truncated
            c.active = False
            return
        tokens = self.tokens.close_turn(out.token_ids) + self.tokens.message(result.user_message)
        room = self.limits.max_tokens_per_conversation - len(c.trajectory.response_ids)
        if len(tokens) + 1 > room:  # the message does not fit with a token of reply after it
            c.truncated, c.active = True, False
            return
        c.trajectory.add_environment(tokens)

    async def _converse(self, driver, stepper: EnvStepper, c: ConversationState, sampling, step, base_seed) -> None:
        await self._open(c)
        while c.active:
            out = await self._generate(driver, c, sampling, step, base_seed)
            reply, final = self._take_turn(c, out)
            result = await stepper.step(c.session, reply, final)
            self._take_step(c, out, result)

    async def _lockstep(self, driver, conversations, sampling, step, base_seed) -> None:
        """The baseline: every turn waits for the whole batch's generations, then for all of
        its environment steps, before any conversation's next turn starts."""
        await asyncio.gather(*(self._open(c) for c in conversations))
        active = [c for c in conversations if c.active]
        while active:
            outs = await asyncio.gather(*(self._generate(driver, c, sampling, step, base_seed) for c in active))
            turns = [self._take_turn(c, out) for c, out in zip(active, outs)]
            results = await step_all([(c.session, r) for c, (r, _) in zip(active, turns)], [f for _, f in turns])
            for c, out, result in zip(active, outs, results):
                self._take_step(c, out, result)
            active = [c for c in active if c.active]

    # ---------------------------------------------------------------- the batch
    def _batch(self, conversations: list[ConversationState], version: int) -> RolloutBatch:
        batch = RolloutBatch(policy_version=version)
        for c in conversations:
            t, s = c.trajectory, c.session
            unscorable = c.error is not None or s.unscorable
            rewards = [float(r) for r in s.turn_rewards][: len(t.turn_ends)]
            rewards += [0.0] * (len(t.turn_ends) - len(rewards))
            batch.prompt_ids.append(t.prompt_ids)
            batch.response_ids.append(t.response_ids)
            batch.response_logprobs.append(t.logprobs)
            batch.finish_reasons.append("length" if c.truncated else "stop")
            batch.prompt_index.append(c.row_index)
            batch.loss_masks.append(t.loss_mask)
            batch.turn_ends.append(t.turn_ends)
            batch.turn_rewards.append(rewards)
            final = s.conversation_reward if s.conversation_reward is not None else 0.0
            batch.conversation_rewards.append(math.nan if unscorable else float(final))
            batch.conversations.append([dict(m) for m in s.messages])
            info = {"turns": len(t.turn_ends), "truncated": c.truncated, "unscorable": unscorable,
                    "error": c.error or s.error, "assistant_tokens": sum(t.loss_mask)}
            info.update({k: float(v) for k, v in s.metrics.items()})
            batch.env_infos.append(info)
        return batch

