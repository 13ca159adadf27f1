"""The dialogue-environment API, loading an environment class, and running it safely.

An environment is any class named in config as ``env.class: package.module:Class`` and built
with ``env.kwargs``::

    class MyEnv:
        def __init__(self, **kwargs): ...

        def reset(self, row: PromptRow, seed: int) -> list[dict]:
            '''The opening messages of one conversation; the last one is a "user" message.'''

        def step(self, messages: list[dict], assistant_reply: str):
            '''-> (next_message, reward, done, info)'''

The contract:

* **One instance per conversation.** :meth:`EnvFactory.make` builds a fresh instance for every
  conversation (every sample of every prompt), so per-conversation state lives on ``self``.
* ``reset(row, seed)``: ``row`` is a :class:`pipeline.data.PromptRow` (``messages``, ``answer``,
  ``references``, ``metadata``); ``seed`` makes the conversation reproducible. Returns a
  non-empty list of ``{"role": "system" | "user" | "assistant", "content": str}`` dicts ending
  with a ``"user"`` message.
* ``step(messages, assistant_reply)``: ``messages`` is the conversation *before* the reply
  (a copy: changing it changes nothing), ending with the message the reply answers;
  ``assistant_reply`` is the reply's text. Returns a 4-tuple:

  - ``next_message``: the next user turn as a string, or a message dict whose role is
    ``user``, ``tool`` or ``system``; ``None`` ends the conversation (as ``done`` does);
  - ``reward``: this reply's reward, a finite number;
  - ``done``: the conversation is over (a message returned with ``done`` is not used);
  - ``info``: a dict (``None`` counts as ``{}``). Keys read by rayppo:
    ``info["conversation_reward"]`` (on the final step, optional) rewards the whole
    conversation *on top of* the turn rewards; ``info["metrics"]`` (on the final step,
    optional) is a dict of numbers averaged over the batch's conversations as
    ``env/<name>`` (for example ``env/success``).

  A conversation's return is the sum of its turn rewards plus its conversation reward.
* Either method may be ``async def`` (awaited: a step may call another model or a service).
  Synchronous ones run on ``env.step_threads`` threads, so a slow step never blocks the
  conversations that are ready.
* Optional, batched steps: a ``staticmethod`` or ``classmethod`` ``step_batch(batch)`` taking a
  list of ``(env, messages, assistant_reply)`` triples (the env instance says which
  conversation each pair belongs to) and returning one 4-tuple per triple, in order.
  :func:`step_all` uses it for the conversations whose turns end together.
* Optional hooks: ``from_env_config(cls, env_cfg)`` (classmethod) builds an instance from the
  whole ``env`` section instead of ``cls(**env.kwargs)`` (the LLM user reads ``env.user``);
  ``start_services(cls, env_cfg, placement)`` / ``stop_services(cls)`` (classmethods) start and
  stop what every instance shares; ``user_config(cls, env_cfg)`` (classmethod) names the user
  model engine the controller starts for it (the LLM user: environments never hold engines);
  a class attribute ``trial_step = False`` skips the trial step of :func:`load_env` (its step
  needs a service or an engine that starts with the run); ``truncated_metrics(self) -> dict`` gives the ``info["metrics"]`` of a
  conversation rayppo's limits cut short (the memory task counts it as a failure), which has
  no final step of its own.

Failures never crash a run: an exception, a timeout (``env.step_timeout_s``) or a return value
of the wrong type in ``reset`` or ``step`` marks *that conversation* unscorable (counted as
``env/unscorable``; the error names the environment class). Bad environments are caught
before heavy work instead: :func:`load_env` raises ``ValueError`` naming ``env.class`` when the
import fails, the object is not a class, methods are missing, the constructor rejects
``env.kwargs``, or a trial ``reset`` / ``step`` on the first training row returns the wrong types.

How a multi-turn rollout uses this (one :class:`EnvSession` per conversation)::

    factory = load_env(cfg.env, first_row)          # before Ray; ValueError naming env.class
    factory.start(placement)                        # shared services, if the class has any
    session = factory.make()
    messages = await session.areset(row, seed)      # opening messages
    while not session.done:
        reply = ...                                 # one assistant turn from the engine
        result = await session.astep(reply, final=out_of_tokens)
        # result.user_message (None when done), result.reward, result.unscorable
    factory.metrics()                               # env/* counters since the last call
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config.envs import EnvConfig
from pipeline.data import PromptRow
from pipeline.data.messages import clean_messages
from pipeline.envs.calls import EnvCaller, EnvStats

logger = logging.getLogger(__name__)

OPENING_ROLES = ("system", "user", "assistant")
NEXT_MESSAGE_ROLES = ("user", "tool", "system")
REQUIRED_METHODS = ("reset", "step")
TRIAL_REPLY = "OK."
"""The assistant reply of :func:`load_env`'s trial step."""


class EnvReturnError(ValueError):
    """An environment returned something outside the contract (the message names the class)."""


# ---------------------------------------------------------------------------------------------
# Import paths


def import_object(path: str, field_name: str) -> Any:
    """The object an import path ``package.module:Name`` (``Name`` may be dotted) names;
    ``ValueError`` naming ``field_name`` when it cannot be imported."""
    module_name, sep, attr_path = (path or "").partition(":")
    if not isinstance(path, str) or not sep or not module_name.strip() or not attr_path.strip():
        raise ValueError(f"{field_name}={path!r} must be an import path 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{field_name}={path!r}: cannot import module {module_name!r} ({e})") from e
    except Exception as e:  # the module's own import-time code may raise anything
        raise ValueError(
            f"{field_name}={path!r}: importing module {module_name!r} failed ({type(e).__name__}: {e})"
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{field_name}={path!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj


def class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# ---------------------------------------------------------------------------------------------
# Checking what an environment returns


def check_opening(value: Any, env_name: str) -> list[dict]:
    """``reset``'s return value as clean message dicts; :class:`EnvReturnError` otherwise."""
    where = f"env.class={env_name}: reset() returned"
    if not isinstance(value, (list, tuple)) or not value:
        raise EnvReturnError(f"{where} {_short(value)}; expected a non-empty list of message dicts")
    messages = clean_messages(value, where, "messages", OPENING_ROLES, EnvReturnError)
    if messages[-1]["role"] != "user":
        raise EnvReturnError(f"{where} messages ending with role {messages[-1]['role']!r}; the last must be 'user'")
    return messages


@dataclass
class StepResult:
    """One environment step, checked: what the rollout loop needs next."""

    user_message: Optional[dict]
    """The next message to append (``None`` when the conversation is over)."""
    reward: float
    """This assistant turn's reward (0.0 when unscorable)."""
    done: bool
    info: dict = field(default_factory=dict)
    conversation_reward: Optional[float] = None
    """``info["conversation_reward"]`` when the environment gave one."""
    truncated: bool = False
    """The conversation was ended by rayppo's limits, not by the environment."""
    unscorable: bool = False
    """The environment failed on this conversation; its samples must be left out."""
    error: Optional[str] = None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, (bool, str, bytes)) or not hasattr(type(value), "__float__"):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_step(value: Any, env_name: str) -> StepResult:
    """``step``'s return value as a :class:`StepResult`; :class:`EnvReturnError` otherwise."""
    where = f"env.class={env_name}: step() returned"
    if not isinstance(value, tuple) or len(value) != 4:
        raise EnvReturnError(f"{where} {_short(value)}; expected a tuple (next_message, reward, done, info)")
    message, reward, done, info = value
    if isinstance(message, str):
        message = {"role": "user", "content": message}
    elif isinstance(message, dict):
        role, content = message.get("role"), message.get("content")
        if role not in NEXT_MESSAGE_ROLES or not isinstance(content, str):
            raise EnvReturnError(
                f"{where} next message {_short(message)}; expected a string or "
                f"{{'role': one of {list(NEXT_MESSAGE_ROLES)}, 'content': str}}"
            )
        message = {"role": role, "content": content}
    elif message is not None:
        raise EnvReturnError(f"{where} a {type(message).__name__} next message; expected a string, a dict or None")
    number = _finite(reward)
    if number is None:
        raise EnvReturnError(f"{where} reward {_short(reward)}; expected a finite number")
    if not isinstance(done, bool) and type(done).__name__ != "bool_":  # numpy bools are fine
        raise EnvReturnError(f"{where} done={_short(done)}; expected a bool")
    info = {} if info is None else info
    if not isinstance(info, dict):
        raise EnvReturnError(f"{where} info of type {type(info).__name__}; expected a dict")
    conversation_reward = None
    if "conversation_reward" in info:
        conversation_reward = _finite(info["conversation_reward"])
        if conversation_reward is None:
            raise EnvReturnError(
                f"{where} info['conversation_reward']={_short(info['conversation_reward'])}; expected a finite number"
            )
    metrics = info.get("metrics", {})
    if not isinstance(metrics, dict) or any(_finite(v) is None for v in metrics.values()):
        raise EnvReturnError(f"{where} info['metrics']={_short(metrics)}; expected a dict of finite numbers")
    done = bool(done) or message is None
    return StepResult(None if done else message, number, done, info, conversation_reward)


class EnvSession:
    """One conversation with one environment instance; every call is checked and none raises.

    Keeps the conversation's messages (``messages``), turn rewards, conversation reward and
    whether it is over or unscorable. After a failed ``reset`` the session still returns the
    row's own messages, so the rollout's shapes stay regular; the first ``step`` then ends it.
    """

    def __init__(self, env: Any, factory: "EnvFactory"):
        self.env = env
        self.factory = factory
        self.messages: list[dict] = []
        self.turn_rewards: list[float] = []
        self.conversation_reward: Optional[float] = None
        self.metrics: dict[str, float] = {}
        self.done = False
        self.unscorable = False
        self.error: Optional[str] = None

    @property
    def turns(self) -> int:
        """Assistant turns stepped so far."""
        return len(self.turn_rewards)

    @property
    def total_reward(self) -> float:
        return sum(self.turn_rewards) + (self.conversation_reward or 0.0)

    # -- reset
    async def areset(self, row: PromptRow, seed: int) -> list[dict]:
        start = time.perf_counter()
        if self.env is None:  # its constructor failed (already counted)
            return self._reset_failed(None, row, start)
        try:
            value = await self.factory.caller.acall(self.env.reset, row, seed)
            return self._opened(check_opening(value, self.factory.name), start)
        except Exception as e:  # noqa: BLE001 - the environment's failure, not ours
            return self._reset_failed(e, row, start)

    def reset(self, row: PromptRow, seed: int) -> list[dict]:
        start = time.perf_counter()
        if self.env is None:
            return self._reset_failed(None, row, start)
        try:
            value = self.factory.caller.call(self.env.reset, row, seed)
            return self._opened(check_opening(value, self.factory.name), start)
        except Exception as e:  # noqa: BLE001
            return self._reset_failed(e, row, start)

    def _opened(self, messages: list[dict], start: float) -> list[dict]:
        self.factory.stats.add(conversations=1, seconds=time.perf_counter() - start)
        self.messages = messages
        return copy.deepcopy(messages)

    def _reset_failed(self, error: Optional[Exception], row: PromptRow, start: float) -> list[dict]:
        self.factory.stats.add(conversations=1, seconds=time.perf_counter() - start)
        if error is not None:
            self._fail(error, "reset")
        self.messages = [dict(m) for m in row.messages]
        return copy.deepcopy(self.messages)

    # -- step
    async def astep(self, assistant_reply: str, final: bool = False) -> StepResult:
        """Step with this turn's reply. ``final``: rayppo ends the conversation after this turn
        (token budget spent) whatever the environment says; its reward still counts."""
        if self.done or self.unscorable:
            return self._closed()
        start = time.perf_counter()
        try:
            value = await self.factory.caller.acall(self.env.step, copy.deepcopy(self.messages), assistant_reply)
        except Exception as e:  # noqa: BLE001
            return self._step_failed(e, start)
        return self.apply(value, assistant_reply, final, start)

    def step(self, assistant_reply: str, final: bool = False) -> StepResult:
        if self.done or self.unscorable:
            return self._closed()
        start = time.perf_counter()
        try:
            value = self.factory.caller.call(self.env.step, copy.deepcopy(self.messages), assistant_reply)
        except Exception as e:  # noqa: BLE001
            return self._step_failed(e, start)
        return self.apply(value, assistant_reply, final, start)

    def apply(self, value: Any, assistant_reply: str, final: bool = False, start: float | None = None) -> StepResult:
        """Check a raw ``step`` return value (also what :func:`step_all` gets from ``step_batch``)
        and advance the conversation."""
        seconds = time.perf_counter() - start if start is not None else 0.0
        try:
            result = check_step(value, self.factory.name)
        except EnvReturnError as e:
            return self._step_failed(e, None, seconds)
        self.factory.stats.add(steps=1, seconds=seconds)
        self.turn_rewards.append(result.reward)
        self.messages.append({"role": "assistant", "content": assistant_reply})
        limit = self.factory.config.max_turns
        if not result.done and (final or self.turns >= limit):
            result.done, result.truncated, result.user_message = True, True, None
            self.factory.stats.add(truncated=1)
        if result.done:
            self.done = True
            self.conversation_reward = result.conversation_reward
            metrics = self._truncated_metrics() if result.truncated else result.info.get("metrics", {})
            self.metrics = {k: float(v) for k, v in metrics.items()}
            self.factory.stats.add_metrics(self.metrics)
        else:
            self.messages.append(result.user_message)
        return result

    def _truncated_metrics(self) -> dict:
        """The environment's ``truncated_metrics()`` for a conversation rayppo cut short, so a
        cut conversation still counts (e.g. as a failure); ``{}`` without one or if it fails."""
        hook = getattr(self.env, "truncated_metrics", None)
        try:
            metrics = hook() if hook is not None else {}
            return metrics if isinstance(metrics, dict) and all(_finite(v) is not None for v in metrics.values()) else {}
        except Exception:  # noqa: BLE001 - only the metric is lost
            return {}

    def _closed(self) -> StepResult:
        if not self.done:  # unscorable since reset: the first step ends it
            self.done = True
        return StepResult(None, 0.0, True, {}, unscorable=self.unscorable, error=self.error)

    def _step_failed(self, error: Exception, start: float | None, seconds: float | None = None) -> StepResult:
        seconds = seconds if seconds is not None else time.perf_counter() - start
        self.factory.stats.add(steps=1, seconds=seconds)
        self._fail(error, "step")
        self.turn_rewards.append(0.0)
        self.done = True
        return StepResult(None, 0.0, True, {}, unscorable=True, error=self.error)

    def _fail(self, error: Exception, method: str) -> None:
        name = self.factory.name
        if isinstance(error, EnvReturnError):
            self.factory.stats.add(bad_returns=1)
            text = str(error)
        elif isinstance(error, (asyncio.TimeoutError, TimeoutError)):
            self.factory.stats.add(timeouts=1)
            text = f"env.class={name}: {method}() took longer than env.step_timeout_s={self.factory.config.step_timeout_s}"
        else:
            self.factory.stats.add(errors=1)
            text = f"env.class={name}: {method}() raised {type(error).__name__}: {error}"
        if not self.unscorable:
            self.factory.stats.add(unscorable=1)
        self.unscorable, self.error = True, text
        self.factory.warn_once(text)


async def step_all(items: list[tuple[EnvSession, str]], final: Optional[list[bool]] = None) -> list[StepResult]:
    """Step several conversations whose turns ended together: one ``step_batch`` call per
    environment class that has one, concurrent ``astep`` calls for the rest."""
    final = final or [False] * len(items)
    results: list[Optional[StepResult]] = [None] * len(items)
    batched: dict[type, list[int]] = {}
    singles = []
    for i, (session, _) in enumerate(items):
        if hasattr(type(session.env), "step_batch") and not (session.done or session.unscorable):
            batched.setdefault(type(session.env), []).append(i)
        else:
            singles.append(i)

    async def one(i: int) -> None:
        results[i] = await items[i][0].astep(items[i][1], final[i])

    async def batch(cls: type, indices: list[int]) -> None:
        sessions = [items[i][0] for i in indices]
        caller = sessions[0].factory.caller
        triples = [(s.env, copy.deepcopy(s.messages), items[i][1]) for s, i in zip(sessions, indices)]
        start = time.perf_counter()
        try:
            values = await caller.acall(cls.step_batch, triples)
            if not isinstance(values, (list, tuple)) or len(values) != len(triples):
                raise EnvReturnError(
                    f"env.class={sessions[0].factory.name}: step_batch() returned {_short(values)}; "
                    f"expected a list of {len(triples)} (next_message, reward, done, info) tuples"
                )
        except Exception as e:  # noqa: BLE001
            seconds = (time.perf_counter() - start) / len(indices)
            for s, i in zip(sessions, indices):
                results[i] = s._step_failed(e, None, seconds)
            return
        seconds = (time.perf_counter() - start) / len(indices)
        for s, i, value in zip(sessions, indices, values):
            results[i] = s.apply(value, items[i][1], final[i])
            s.factory.stats.add(seconds=seconds)

    await asyncio.gather(*(one(i) for i in singles), *(batch(c, ix) for c, ix in batched.items()))
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Loading


class EnvFactory:
    """A validated environment class and its settings; makes one :class:`EnvSession` per
    conversation. Plain data plus a class reference, so it pickles into Ray actors."""

    def __init__(self, cls: type, config: EnvConfig):
        self.cls = cls
        self.config = config
        self.name = config.class_path or class_name(cls)
        """How errors name the environment: ``env.class`` as configured."""
        self.stats = EnvStats()
        self._caller: EnvCaller | None = None
        self._warned: set[str] = set()
        self._started = False
        self.trial_message: Optional[dict] = None
        """The next message of :meth:`check`'s trial step (``None``: none, or no trial step)."""

    def __getstate__(self) -> dict:
        # Threads, loops and locks stay behind; the copy starts its own when it first calls.
        return {"cls": self.cls, "config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cls"], state["config"])

    @property
    def caller(self) -> EnvCaller:
        if self._caller is None:
            self._caller = EnvCaller(self.config.step_threads, self.config.step_timeout_s)
        return self._caller

    def new_env(self) -> Any:
        """A fresh environment instance (raises what its constructor raises)."""
        build = getattr(self.cls, "from_env_config", None)
        if build is not None:
            return build(self.config)
        return self.cls(**self.config.kwargs)

    def make(self) -> EnvSession:
        """A session over a fresh instance. A constructor that fails here (it passed in
        :func:`load_env`) gives a session that is unscorable from the start."""
        try:
            return EnvSession(self.new_env(), self)
        except Exception as e:  # noqa: BLE001
            session = EnvSession(None, self)
            session._fail(e, "__init__")
            return session

    def start(self, placement: Any = None) -> None:
        """Start the services every instance shares (the class's ``start_services``)."""
        hook = getattr(self.cls, "start_services", None)
        if hook is not None and not self._started:
            hook(self.config, placement)
        self._started = True

    def shutdown(self) -> None:
        hook = getattr(self.cls, "stop_services", None)
        if hook is not None and self._started:
            hook()
        self._started = False
        if self._caller is not None:
            self._caller.close()
            self._caller = None

    def metrics(self) -> dict[str, float]:
        """``env/*`` counters since the last call (see :meth:`EnvStats.pop`)."""
        return self.stats.pop()

    def warn_once(self, text: str) -> None:
        kind = text.split(":", 2)[1] if text.count(":") >= 2 else text
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("%s (that conversation is unscorable; further ones are only counted)", text)

    def check(self, row: PromptRow, seed: int = 0) -> list[dict]:
        """Trial ``reset`` (and ``step`` unless turned off) on ``row``; ``ValueError`` naming
        ``env.class`` on any failure. Returns the opening messages."""
        env_name = self.name
        try:
            env = self.new_env()
        except Exception as e:
            raise ValueError(f"env.class={env_name}: constructing it with env.kwargs={_short(self.config.kwargs)} failed ({type(e).__name__}: {e})") from e
        caller = self.caller
        try:
            opening = check_opening(caller.call(env.reset, row, seed), env_name)
        except EnvReturnError as e:
            raise ValueError(f"{e} (trial reset on {row.source})") from None
        except Exception as e:
            raise ValueError(f"env.class={env_name}: trial reset on {row.source} raised {type(e).__name__}: {e}") from e
        if not (self.config.trial_step and getattr(self.cls, "trial_step", True)):
            return opening
        try:
            result = check_step(caller.call(env.step, copy.deepcopy(opening), TRIAL_REPLY), env_name)
        except EnvReturnError as e:
            raise ValueError(f"{e} (trial step on {row.source})") from None
        except Exception as e:
            raise ValueError(f"env.class={env_name}: trial step on {row.source} raised {type(e).__name__}: {e}") from e
        self.trial_message = None if result.done else result.user_message
        return opening


def load_env(env_cfg: EnvConfig, sample_row: Optional[PromptRow] = None) -> EnvFactory:
    """Import and check ``env.class`` (no Ray, no model); with ``sample_row`` also run a trial
    ``reset`` / ``step`` on it. Raises ``ValueError`` naming ``env.class``."""
    path = env_cfg.class_path
    if path is None:
        raise ValueError("env.class is null: set it to 'package.module:Class' for a multi-turn run")
    cls = import_object(path, "env.class")
    if not inspect.isclass(cls):
        raise ValueError(f"env.class={path!r} is a {type(cls).__name__}, not a class")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise ValueError(
            f"env.class={path!r} has no {' or '.join(repr(m) for m in missing)} method; an environment "
            "needs reset(row, seed) -> messages and step(messages, assistant_reply) -> "
            "(next_message, reward, done, info)"
        )
    batch_step = getattr(cls, "step_batch", None)
    if batch_step is not None and not callable(batch_step):
        raise ValueError(f"env.class={path!r}: step_batch must be a staticmethod or classmethod")
    if getattr(cls, "from_env_config", None) is None:
        try:
            inspect.signature(cls).bind(**env_cfg.kwargs)
        except TypeError as e:
            raise ValueError(f"env.kwargs does not fit env.class={path!r}: {e}") from None
    factory = EnvFactory(cls, env_cfg)
    if sample_row is not None:
        factory.check(sample_row)
    return factory
