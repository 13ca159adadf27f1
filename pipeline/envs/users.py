"""Simulated users: scripted, another language model, or a person at the terminal.

Each is an environment of :mod:`pipeline.envs.base` (or a part of one):

* :class:`ScriptedUser` plays fixed user turns in order; the built-in tasks use it
  (:class:`pipeline.envs.memory.MemoryEnv`). :class:`ScriptedUserEnv` runs it on any rows whose
  ``metadata["user_turns"]`` lists the follow-up messages, scored by a rule at the end.
* :class:`LLMUserEnv`: another model plays the user (``env.user``: any model path, a persona
  prompt, its own sampling settings). It is served by its own engine actor
  (:class:`rollout_workers.user_model.UserModelServer`, vLLM or transformers, never trained,
  started by the controller) that batches the requests of
  all conversations waiting for a user message; the environment's ``step`` is async, so the
  rollout keeps generating while users think. The conversation reward is a rule run at the end.
* :class:`HumanUserEnv`: a person types the user's messages in the terminal (``rayppo chat``'s
  terminal I/O) and rates the conversation at the end.

Conversation rules (``env.user.reward``, ``ScriptedUserEnv(reward=...)``) are
``package.module:function`` import paths called as ``fn(messages, answer) -> float`` with the
whole conversation (the last message is the assistant's final reply) and the row's answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from typing import Any, Callable, Optional

from pipeline.config.envs import UserConfig
from pipeline.data import PromptRow
from pipeline.envs.base import import_object
from pipeline.infra.terminal import TerminalChat

logger = logging.getLogger(__name__)

ConversationRule = Callable[[list, Optional[str]], float]


def load_rule(path: Optional[str], field_name: str) -> Optional[ConversationRule]:
    """The conversation rule an import path names (``None`` for none); ``ValueError`` naming
    ``field_name`` when it cannot be imported or is not callable."""
    if path is None:
        return None
    fn = import_object(path, field_name)
    if not callable(fn):
        raise ValueError(f"{field_name}={path!r} is a {type(fn).__name__}, not a function")
    return fn


def message_seed(base_seed: int, conversation_seed: int, turn: int) -> int:
    """Seed of one user message: the same conversation and turn always sample the same text."""
    return (base_seed * 1_000_003 + conversation_seed * 10_007 + turn) % (2**31 - 1)


# ---------------------------------------------------------------------------------------------
# Scripted users


class ScriptedUser:
    """Says the given turns in order, whatever the assistant replies; ``None`` when done."""

    def __init__(self, turns: list[str]):
        self.turns = list(turns)
        self.position = 0

    @property
    def finished(self) -> bool:
        return self.position >= len(self.turns)

    def next_message(self) -> Optional[str]:
        if self.finished:
            return None
        self.position += 1
        return self.turns[self.position - 1]


class ScriptedUserEnv:
    """Rows whose ``metadata["user_turns"]`` holds the user's follow-up messages (the opening
    ones are the row's ``messages``); each reply earns 0 and the whole conversation is scored by
    ``reward`` (``package.module:function``, see the module docstring) at the end."""

    def __init__(self, reward: Optional[str] = None, turns_key: str = "user_turns"):
        self.rule = load_rule(reward, "env.kwargs.reward")
        self.turns_key = turns_key
        self.user = ScriptedUser([])
        self.answer: Optional[str] = None

    def reset(self, row: PromptRow, seed: int) -> list[dict]:
        turns = row.metadata.get(self.turns_key, [])
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{row.source}: metadata {self.turns_key!r} must be a list of strings, got {turns!r:.80}")
        self.user = ScriptedUser(turns)
        self.answer = row.answer
        return [dict(m) for m in row.messages]

    def step(self, messages: list[dict], assistant_reply: str):
        message = self.user.next_message()
        if message is not None:
            return message, 0.0, False, {}
        conversation = messages + [{"role": "assistant", "content": assistant_reply}]
        info = {"conversation_reward": float(self.rule(conversation, self.answer))} if self.rule else {}
        return None, 0.0, True, info


# ---------------------------------------------------------------------------------------------
# The LLM user: a model served by its own engine actor (rollout_workers.user_model)


def user_view(conversation: list[dict], persona: str) -> list[dict]:
    """The conversation as the user model sees it: its persona as the system prompt, roles
    swapped (the assistant's replies are what it answers; its own messages are its turns)."""
    flipped = {"user": "assistant", "assistant": "user"}
    view = [{"role": "system", "content": persona}] if persona else []
    return view + [{"role": flipped[m["role"]], "content": m["content"]} for m in conversation if m["role"] in flipped]


# Read by the environment, not the engine: changing them needs no other engine.
_ENV_SIDE_FIELDS = ("persona", "max_user_turns", "stop_phrase", "reward", "start_timeout_s", "request_timeout_s")


def server_name(user: UserConfig) -> str:
    """The user engine actor's Ray name: one actor per engine configuration (model, engine
    settings, sampling)."""
    engine_side = {k: v for k, v in dataclasses.asdict(user).items() if k not in _ENV_SIDE_FIELDS}
    blob = json.dumps(engine_side, sort_keys=True)
    return "rayppo-llm-user-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def _user_engine(user: UserConfig) -> Any:
    """The running user engine actor for ``user``, by its name (the controller starts it with
    the run: :func:`rollout_workers.user_model.start_user_server`). Looked up at each request, so
    an engine restarted under the same name is found again."""
    import ray

    return ray.get_actor(server_name(user))


class LLMUserEnv:
    """Another model plays the user (``env.user``): it answers each assistant reply with the
    next user message until ``env.user.max_user_turns`` messages or ``env.user.stop_phrase``.
    The opening messages are the row's. Each reply earns 0; ``env.user.reward`` scores the
    conversation at the end (its conversation reward). ``env.kwargs`` may override any
    ``env.user`` field."""

    trial_step = False  # a step needs the user engine, which starts with the run

    def __init__(self, user: UserConfig | dict | None = None, **overrides: Any):
        if isinstance(user, dict) or user is None:
            user = UserConfig(**(user or {}))
        try:
            self.user = dataclasses.replace(user, **overrides)
        except TypeError as e:
            raise ValueError(f"env.kwargs: {e} (LLMUserEnv takes the fields of env.user)") from None
        if not self.user.model_path:
            raise ValueError("env.user.model_path: the LLM user needs a model (an HF directory or hub id)")
        self.rule = load_rule(self.user.reward, "env.user.reward")
        self.seed = 0
        self.answer: Optional[str] = None
        self.user_turns = 0

    @classmethod
    def from_env_config(cls, env_cfg) -> "LLMUserEnv":
        return cls(user=env_cfg.user, **env_cfg.kwargs)

    @classmethod
    def user_config(cls, env_cfg) -> UserConfig:
        """The user engine this environment talks to (``env.user`` with ``env.kwargs`` applied):
        the controller starts it (:func:`rollout_workers.user_model.start_user_server`) before
        the first conversation, as it starts reward actors."""
        return cls.from_env_config(env_cfg).user

    def reset(self, row: PromptRow, seed: int) -> list[dict]:
        self.seed, self.answer, self.user_turns = seed, row.answer, 0
        return [dict(m) for m in row.messages]

    async def step(self, messages: list[dict], assistant_reply: str):
        conversation = messages + [{"role": "assistant", "content": assistant_reply}]
        if self.user_turns >= self.user.max_user_turns:
            return None, 0.0, True, self._final(conversation)
        handle = _user_engine(self.user)
        seed = message_seed(self.user.seed, self.seed, self.user_turns)
        try:
            text = await asyncio.wait_for(
                handle.reply.remote(user_view(conversation, self.user.persona), seed), self.user.request_timeout_s
            )
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"env.user: no user message from {self.user.model_path!r} within "
                f"env.user.request_timeout_s={self.user.request_timeout_s}"
            ) from None
        self.user_turns += 1
        if self.user.stop_phrase and self.user.stop_phrase in text:
            return None, 0.0, True, self._final(conversation)
        return text, 0.0, False, {}

    def _final(self, conversation: list[dict]) -> dict:
        info: dict[str, Any] = {"metrics": {"user_turns": float(self.user_turns)}}
        if self.rule is not None:
            info["conversation_reward"] = float(self.rule(conversation, self.answer))
        return info


# ---------------------------------------------------------------------------------------------
# A person at the terminal


class HumanUserEnv:
    """A person plays the user in the terminal, through ``rayppo chat``'s terminal I/O
    (:class:`pipeline.infra.terminal.TerminalChat`, or any object with its ``read_message`` /
    ``show_reply`` / ``note``): they see each assistant reply and type the next message; an
    empty line, ``end_command`` or the end of input ends the conversation, which they then rate
    from 0 to 10 (the conversation reward, scaled to [0, 1]; a blank rating scores 0). Raise
    ``env.step_timeout_s``: people take longer than a minute."""

    trial_step = False  # a step waits for a person

    def __init__(self, end_command: str = "/done", rate: bool = True, console: Any = None):
        self.end_command, self.rate = end_command, rate
        self.console = console if console is not None else TerminalChat()

    def reset(self, row: PromptRow, seed: int) -> list[dict]:
        self.console.note(f"new conversation {row.source}; an empty line or {self.end_command} ends it")
        for message in row.messages:
            self.console.note(f"{message['role']}: {message['content']}")
        return [dict(m) for m in row.messages]

    def step(self, messages: list[dict], assistant_reply: str):
        self.console.show_reply(assistant_reply)
        text = (self.console.read_message() or "").strip()
        if text and text != self.end_command:
            return text, 0.0, False, {}
        return None, 0.0, True, {"conversation_reward": self._rating()} if self.rate else {}

    def _rating(self) -> float:
        while True:
            self.console.note("rate the conversation from 0 to 10 (blank: 0)")
            answer = (self.console.read_message() or "").strip()
            if not answer:
                return 0.0
            try:
                score = float(answer)
            except ValueError:
                score = -1.0
            if 0 <= score <= 10:
                return score / 10
            self.console.note("a number from 0 to 10, please")
