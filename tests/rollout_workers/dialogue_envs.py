"""Small dialogue environments for the multi-turn tests (named as ``env.class`` by import path,
so Ray actors import them too)."""

from __future__ import annotations

import asyncio
import time


class CountingEnv:
    """``turns`` assistant turns: each reply earns ``turn_reward``; the last also ends the
    conversation with ``conversation_reward`` and reports ``success``."""

    def __init__(self, turns: int = 3, turn_reward: float = 0.1, conversation_reward: float = 1.0):
        self.turns, self.turn_reward, self.conversation_reward = turns, turn_reward, conversation_reward
        self.k = 0

    def reset(self, row, seed):
        self.k = 0
        return [{"role": "user", "content": row.messages[-1]["content"]}]

    def step(self, messages, reply):
        self.k += 1
        if self.k >= self.turns:
            info = {"conversation_reward": self.conversation_reward, "metrics": {"success": float(len(reply) % 2)}}
            return None, self.turn_reward, True, info
        return f"Say {self.k}.", self.turn_reward, False, {}


class GatedEnv(CountingEnv):
    """Async; ``log`` records every step's start and end as ``(event, row source, step)``.

    The row whose ``metadata["hold"]`` is set is the slow conversation, slow by order rather
    than by seconds: each of its steps returns only once the log shows the ``others``
    conversations far enough along: ``"ended"``, all of them have ended; ``"step"``, all of
    them have ended this same step. ``patience_s`` only breaks a deadlock (the step then
    raises, saying what it waited for)."""

    log: list[tuple[str, str, int]] = []
    others = 0
    patience_s = 30.0

    async def reset(self, row, seed):
        # Async like the steps, so every conversation opens on the loop in the same turn of it
        # and queues its first turn in the first engine step (no thread pool in between).
        self.source, self.hold = row.source, row.metadata.get("hold")
        return super().reset(row, seed)

    async def step(self, messages, reply):
        step = self.k + 1
        GatedEnv.log.append(("start", self.source, step))
        deadline = time.monotonic() + self.patience_s
        while self.hold and not self._released(step):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.source}: step {step} waited {self.patience_s:g} s for the other "
                                   f"conversations (hold={self.hold!r}); log: {GatedEnv.log}")
            await asyncio.sleep(0.005)
        result = super().step(messages, reply)
        GatedEnv.log.append(("end", self.source, step))
        return result

    def _released(self, step: int) -> bool:
        wanted = self.turns if self.hold == "ended" else step
        ended = {source for event, source, k in GatedEnv.log if event == "end" and k == wanted and source != self.source}
        return len(ended) == GatedEnv.others


class FlakyEnv(CountingEnv):
    """Raises in the second step of rows whose ``metadata["fail"]`` is true."""

    def reset(self, row, seed):
        self.fail = bool(row.metadata.get("fail"))
        return super().reset(row, seed)

    def step(self, messages, reply):
        if self.fail and self.k == 1:
            raise RuntimeError("the tool crashed")
        return super().step(messages, reply)


class BatchedEnv(CountingEnv):
    """Steps arrive through ``step_batch``; counts the calls and the steps they carried."""

    calls: list[int] = []

    @classmethod
    def step_batch(cls, batch):
        cls.calls.append(len(batch))
        return [env.step(messages, reply) for env, messages, reply in batch]


class EndlessEnv(CountingEnv):
    """Never ends the conversation itself: rayppo's limits must."""

    def step(self, messages, reply):
        self.k += 1
        return "And then?", 0.0, False, {}


class ShapedEnv(CountingEnv):
    """Rewards a random policy can earn some of, so a short run has a learning signal: each
    reply earns its share of letters, the conversation 1.0 when the last reply has an even
    length. The opening is the row's (any task)."""

    def step(self, messages, reply):
        message, _, done, info = super().step(messages, reply)
        letters = sum(c.isalpha() for c in reply) / max(1, len(reply))
        if done:
            info["conversation_reward"] = float(len(reply) % 2 == 0)
        return message, letters, done, info


def last_reply_letters(messages, answer) -> float:
    """Conversation reward of the LLM-user test: the share of letters in the last reply."""
    reply = messages[-1]["content"]
    return sum(c.isalpha() for c in reply) / max(1, len(reply))
