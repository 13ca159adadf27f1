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


class TimedEnv(CountingEnv):
    """Async: a row's ``metadata["delay"]`` seconds pass in every step (a slow user or tool).
    Records when each conversation ends, per row source."""

    finished: dict[str, float] = {}

    def reset(self, row, seed):
        self.source, self.delay = row.source, float(row.metadata.get("delay", 0.0))
        return super().reset(row, seed)

    async def step(self, messages, reply):
        await asyncio.sleep(self.delay)
        result = super().step(messages, reply)
        if result[2]:
            TimedEnv.finished[self.source] = time.perf_counter()
        return result


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
