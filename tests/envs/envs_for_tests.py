"""Small dialogue environments that follow (or break) the API on purpose, named by import path
in the tests (``tests.envs.envs_for_tests:CountingEnv``)."""

from __future__ import annotations

import asyncio
import math
import threading


class CountingEnv:
    """Two follow-up user turns; each reply earns its length in words; the last step gives a
    conversation reward of 10 and a metric."""

    def __init__(self, turns: int = 3, bonus: float = 10.0):
        self.turns, self.bonus = turns, bonus
        self.turn = 0

    def reset(self, row, seed):
        self.turn = 0
        return [{"role": "system", "content": "Count."}, {"role": "user", "content": f"start {seed}"}]

    def step(self, messages, assistant_reply):
        self.turn += 1
        reward = float(len(assistant_reply.split()))
        if self.turn >= self.turns:
            return None, reward, True, {"conversation_reward": self.bonus, "metrics": {"turns": self.turn}}
        return f"turn {self.turn}", reward, False, {}


class AsyncCountingEnv(CountingEnv):
    """The same, with ``async`` methods that wait a little (a call to a service)."""

    async def reset(self, row, seed):
        await asyncio.sleep(0.01)
        return CountingEnv.reset(self, row, seed)

    async def step(self, messages, assistant_reply):
        await asyncio.sleep(0.01)
        return CountingEnv.step(self, messages, assistant_reply)


class BatchedEnv(CountingEnv):
    """Counts how often its batched step ran and how many pairs it saw."""

    calls: list[int] = []

    @staticmethod
    def step_batch(batch):
        BatchedEnv.calls.append(len(batch))
        return [env.step(messages, reply) for env, messages, reply in batch]


class RaisingEnv(CountingEnv):
    """``step`` raises when the reply says "boom"."""

    def step(self, messages, assistant_reply):
        if "boom" in assistant_reply:
            raise RuntimeError("the service is down")
        return super().step(messages, assistant_reply)


class RaisingResetEnv(CountingEnv):
    """``reset`` raises for odd seeds."""

    def reset(self, row, seed):
        if seed % 2:
            raise KeyError("no such customer")
        return super().reset(row, seed)


class BlockedEnv(CountingEnv):
    """A synchronous step that blocks until the test sets ``release`` (a call that hangs).
    ``returned`` counts the steps that got past it."""

    release = threading.Event()
    returned = 0

    def step(self, messages, assistant_reply):
        BlockedEnv.release.wait(timeout=60)  # a guard: the test releases it long before
        BlockedEnv.returned += 1
        return super().step(messages, assistant_reply)


class MeetingEnv(CountingEnv):
    """A synchronous step that waits at ``barrier`` until ``barrier.parties`` steps are there:
    it returns only when that many steps run at the same time (else it raises, broken)."""

    barrier = threading.Barrier(1)

    def step(self, messages, assistant_reply):
        MeetingEnv.barrier.wait()
        return super().step(messages, assistant_reply)


class MutatingEnv(CountingEnv):
    """Changes the messages it is given (it must not affect the conversation)."""

    def step(self, messages, assistant_reply):
        messages.clear()
        return super().step(messages, assistant_reply)


def _bad(value):
    class Bad(CountingEnv):
        def step(self, messages, assistant_reply):
            return value

    return Bad


ThreeTuple = _bad(("hi", 1.0, False))
StringReward = _bad(("hi", "1.0", False, {}))
NanReward = _bad(("hi", math.nan, False, {}))
IntDone = _bad(("hi", 1.0, 0, {}))
ListInfo = _bad(("hi", 1.0, False, []))
AssistantMessage = _bad(({"role": "assistant", "content": "hi"}, 1.0, False, {}))
BadConversationReward = _bad((None, 1.0, True, {"conversation_reward": "high"}))


class NotAList(CountingEnv):
    def reset(self, row, seed):
        return "hello"


class EndsWithAssistant(CountingEnv):
    def reset(self, row, seed):
        return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


class NoStep:
    def __init__(self):
        pass

    def reset(self, row, seed):
        return [{"role": "user", "content": "hi"}]


class FailingConstructor(CountingEnv):
    def __init__(self, **kwargs):
        raise OSError("missing credentials")


def not_a_class(row, seed):
    return [{"role": "user", "content": "hi"}]
