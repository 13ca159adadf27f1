"""Any dialogue environment as a ``gymnasium.Env``: text observations, text actions.

:class:`DialogueGymEnv` wraps an environment of :mod:`pipeline.envs.base` (by class or
``package.module:Class`` path) so standard tooling can drive the same environment a rayppo run
uses: the observation is the conversation so far rendered as text (one ``role: content`` line
per message, the newest last), the action is the assistant's reply. Both spaces are
``gymnasium.spaces.Text`` over :data:`CHARSET` (printable ASCII plus newline and tab; Text
spaces hold a fixed character set): characters outside it are shown as ``?`` in the
observation, and the exact messages are always in ``info["messages"]``. Observations longer
than ``max_observation_chars`` keep their newest characters.

Rewards: each step returns the reply's turn reward, plus the conversation reward on the step
that ends the conversation. ``terminated`` means the environment ended the conversation;
``truncated`` means ``max_turns`` did. A step the environment fails on (an exception, a wrong
return type) ends the episode with reward 0 and ``info["unscorable"] = True``, as in a run.

Registered as ``rayppo/Dialogue-v0`` with Gymnasium (:func:`register`) and as
``rayppo-dialogue`` with ``ray.tune.register_env`` (:func:`register_rllib`), whose
``env_config`` are this class's keyword arguments. Passes
``gymnasium.utils.env_checker.check_env``.
"""

from __future__ import annotations

import string
from typing import Any, Optional

import gymnasium as gym

from pipeline.config.envs import EnvConfig
from pipeline.data import PromptRow
from pipeline.envs.base import EnvSession, class_name, load_env

CHARSET = frozenset(string.printable)
GYM_ID = "rayppo/Dialogue-v0"
RLLIB_NAME = "rayppo-dialogue"
DEFAULT_ENV = "pipeline.envs.memory:MemoryEnv"
_BLANK_ROW = PromptRow(messages=[{"role": "user", "content": "Hello."}], answer=None, source="gym adapter")


def render_text(messages: list[dict], max_chars: int) -> str:
    """``role: content`` lines, characters outside :data:`CHARSET` as ``?``, at most
    ``max_chars`` (the newest ones)."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    text = "".join(c if c in CHARSET else "?" for c in text)
    return text[-max_chars:]


class DialogueGymEnv(gym.Env):
    """A dialogue environment as a Gymnasium environment (see the module docstring).

    ``rows``: prompt rows (:class:`pipeline.data.PromptRow` or row dicts with ``messages``,
    ``answer``, ``metadata``) a reset picks from with its seed; none: every reset gets one
    blank row and the environment draws the conversation from the seed (the memory task does).
    ``options={"row": row}`` on reset chooses the row.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(
        self,
        env_class: str | type = DEFAULT_ENV,
        env_kwargs: Optional[dict] = None,
        rows: Optional[list] = None,
        max_turns: int = 8,
        max_observation_chars: int = 2048,
        max_action_chars: int = 256,
        step_timeout_s: float = 60.0,
        render_mode: Optional[str] = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: choose one of {self.metadata['render_modes']} or None")
        path = env_class if isinstance(env_class, str) else class_name(env_class)
        config = EnvConfig(class_path=path, kwargs=dict(env_kwargs or {}), max_turns=max_turns,
                           step_timeout_s=step_timeout_s, step_threads=1)
        self.factory = load_env(config)
        self.rows = [self._row(r, i) for i, r in enumerate(rows or [])]
        self.max_observation_chars = max_observation_chars
        self.observation_space = gym.spaces.Text(max_observation_chars, min_length=0, charset=CHARSET)
        self.action_space = gym.spaces.Text(max_action_chars, min_length=0, charset=CHARSET)
        self.render_mode = render_mode
        self.session: Optional[EnvSession] = None

    @staticmethod
    def _row(row: Any, index: int) -> PromptRow:
        if isinstance(row, PromptRow):
            return row
        if not isinstance(row, dict) or "messages" not in row:
            raise ValueError(f"DialogueGymEnv rows[{index}]: expected a PromptRow or a dict with 'messages', got {row!r:.80}")
        return PromptRow(messages=row["messages"], answer=row.get("answer"), source=f"rows[{index}]",
                         references=list(row.get("references", [])), metadata=dict(row.get("metadata") or {}))

    def _observe(self) -> str:
        return render_text(self.session.messages, self.max_observation_chars)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        conversation_seed = int(self.np_random.integers(2**31 - 1))
        if options and "row" in options:
            row = self._row(options["row"], 0)
        elif self.rows:
            row = self.rows[int(self.np_random.integers(len(self.rows)))]
        else:
            row = _BLANK_ROW
        self.session = self.factory.make()
        messages = self.session.reset(row, conversation_seed)
        info = {"messages": messages, "unscorable": self.session.unscorable}
        if self.render_mode == "human":
            self.render()
        return self._observe(), info

    def step(self, action: str):
        if self.session is None:
            raise RuntimeError("DialogueGymEnv.step before reset")
        if not isinstance(action, str):
            raise TypeError(f"DialogueGymEnv: the action is the assistant's reply text, got {type(action).__name__}")
        result = self.session.step(action)
        reward = result.reward + (result.conversation_reward or 0.0)
        info = {
            "messages": [dict(m) for m in self.session.messages],
            "turn_reward": result.reward,
            "unscorable": result.unscorable,
            "env_info": result.info,
        }
        if result.error:
            info["error"] = result.error
        if self.render_mode == "human":
            self.render()
        return self._observe(), float(reward), result.done and not result.truncated, result.truncated, info

    def render(self) -> Optional[str]:
        text = render_text(self.session.messages, self.max_observation_chars) if self.session else ""
        if self.render_mode == "human":
            print(text + "\n")
            return None
        return text

    def close(self) -> None:
        self.factory.shutdown()


def register() -> str:
    """Register :class:`DialogueGymEnv` with Gymnasium as ``rayppo/Dialogue-v0`` (idempotent)."""
    if GYM_ID not in gym.registry:
        gym.register(id=GYM_ID, entry_point=f"{__name__}:DialogueGymEnv")
    return GYM_ID


def register_rllib(name: str = RLLIB_NAME) -> str:
    """Register :class:`DialogueGymEnv` with ``ray.tune.register_env``; RLlib's ``env_config``
    holds its keyword arguments."""
    from ray.tune import register_env

    register_env(name, lambda env_config: DialogueGymEnv(**dict(env_config)))
    return name
