"""Simulated users without a model: scripted users, rules, the terminal user (real stdin)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.config.envs import EnvConfig, UserConfig
from pipeline.data import PromptRow
from pipeline.envs.base import load_env
from pipeline.envs.users import LLMUserEnv, ScriptedUser, message_seed, server_name, user_view

RULES = "tests.envs.test_users"


def mentions_answer(messages, answer):
    """A conversation rule: did the assistant's final reply name the row's answer?"""
    return float(answer is not None and answer in messages[-1]["content"])


def test_scripted_user_says_its_turns_in_order():
    user = ScriptedUser(["a", "b"])
    assert [user.next_message(), user.next_message(), user.next_message()] == ["a", "b", None]
    assert user.finished


def test_scripted_user_env_scores_the_conversation_with_a_rule():
    row = PromptRow(messages=[{"role": "user", "content": "Order 7 is late."}], answer="7", source="r:1",
                    metadata={"user_turns": ["Which order?", "Thanks."]})
    cfg = EnvConfig(class_path="pipeline.envs.users:ScriptedUserEnv", kwargs={"reward": f"{RULES}:mentions_answer"})
    factory = load_env(cfg, row)
    session = factory.make()
    session.reset(row, 0)
    replies = ["Sorry about that.", "Order 7.", "Order 7 ships today."]
    results = [session.step(r) for r in replies]
    assert [r.user_message and r.user_message["content"] for r in results] == ["Which order?", "Thanks.", None]
    assert results[-1].done and results[-1].conversation_reward == 1.0 and session.total_reward == 1.0
    bad = PromptRow(messages=row.messages, answer=None, source="r:2", metadata={"user_turns": "Thanks."})
    with pytest.raises(ValueError, match="r:2: metadata 'user_turns' must be a list of strings"):
        load_env(cfg, bad)
    with pytest.raises(ValueError, match="env.kwargs.reward='tests.envs.test_users:nope'.*has no attribute"):
        load_env(EnvConfig(class_path=cfg.class_path, kwargs={"reward": f"{RULES}:nope"}), row)


def test_user_view_swaps_roles_and_adds_the_persona():
    conversation = [
        {"role": "system", "content": "policy prompt"},
        {"role": "user", "content": "Where is my lamp?"},
        {"role": "assistant", "content": "It ships today."},
    ]
    assert user_view(conversation, "You are a customer.") == [
        {"role": "system", "content": "You are a customer."},
        {"role": "assistant", "content": "Where is my lamp?"},
        {"role": "user", "content": "It ships today."},
    ]


def test_llm_user_checks_its_settings_before_any_model_loads():
    row = PromptRow(messages=[{"role": "user", "content": "hi"}], answer=None, source="r:1")
    with pytest.raises(ValueError, match="env.user.model_path: the LLM user needs a model"):
        load_env(EnvConfig(class_path="pipeline.envs.users:LLMUserEnv"), row)
    cfg = EnvConfig(class_path="pipeline.envs.users:LLMUserEnv", user=UserConfig(model_path="m", reward=f"{RULES}:gone"))
    with pytest.raises(ValueError, match="env.user.reward='tests.envs.test_users:gone'"):
        load_env(cfg, row)
    cfg = EnvConfig(class_path="pipeline.envs.users:LLMUserEnv", kwargs={"temprature": 1.0}, user=UserConfig(model_path="m"))
    with pytest.raises(ValueError, match="env.kwargs: .*temprature"):
        load_env(cfg, row)
    # A valid config passes the trial reset without starting anything (its step needs the engine).
    cfg = EnvConfig(class_path="pipeline.envs.users:LLMUserEnv", kwargs={"max_user_turns": 1}, user=UserConfig(model_path="m"))
    assert load_env(cfg, row).new_env().user.max_user_turns == 1
    assert server_name(UserConfig(model_path="a")) != server_name(UserConfig(model_path="b"))
    assert server_name(UserConfig(model_path="a")) == server_name(UserConfig(model_path="a", persona="other"))
    assert message_seed(0, 5, 1) != message_seed(0, 5, 2)


HUMAN_SCRIPT = textwrap.dedent(
    """
    from pipeline.config.envs import EnvConfig
    from pipeline.data import PromptRow
    from pipeline.envs.base import load_env

    row = PromptRow(messages=[{"role": "user", "content": "Hello shop."}], answer=None, source="terminal")
    factory = load_env(EnvConfig(class_path="pipeline.envs.users:HumanUserEnv", step_timeout_s=30), row)
    session = factory.make()
    session.reset(row, 0)
    for reply in ["Hi! How can I help?", "It ships on Monday.", "unused"]:
        result = session.step(reply)
        if result.done:
            break
    print("TURNS", session.turns, "REWARD", session.conversation_reward, "LAST", session.messages[-2]["content"])
    """
)


def test_human_user_types_in_the_terminal():
    # A real process reading its real stdin: the person's two messages, the end, a rating.
    typed = "When does my lamp ship?\n/done\neleven\n8\n"
    out = subprocess.run([sys.executable, "-c", HUMAN_SCRIPT], input=typed, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "assistant> Hi! How can I help?" in out.stdout and "[a number from 0 to 10, please]" in out.stdout
    assert "[user: Hello shop.]" in out.stdout
    assert "TURNS 2 REWARD 0.8 LAST When does my lamp ship?" in out.stdout


def test_llm_user_env_is_async_and_skips_the_trial_step():
    assert LLMUserEnv.trial_step is False
    import inspect

    assert inspect.iscoroutinefunction(LLMUserEnv.step)


def test_user_model_on_the_transformers_engine(tiny_model):
    # The plain class behind the user engine actor, with the transformers engine (no Ray).
    from rollout_workers.user_model import UserModel

    model = UserModel(UserConfig(model_path=tiny_model, engine="hf", max_tokens=5, max_model_len=64, temperature=1.0))
    view = user_view([{"role": "user", "content": "Compute 1+2."}, {"role": "assistant", "content": "3"}], "Be brief.")
    first = model.reply([(view, 1), (view, 2)])
    assert all(isinstance(t, str) for t in first) and model.reply([(view, 1)]) == first[:1]
    long = view + [{"role": "user", "content": "Compute 12+34. " * 8}, {"role": "assistant", "content": "46"}] * 3
    assert isinstance(model.reply([(long, 0)])[0], str)  # the oldest turns are dropped to fit
    huge = [{"role": "system", "content": "x"}, {"role": "user", "content": "Compute 1+1. " * 40}]
    (error,) = model.reply([(huge, 0)])
    assert isinstance(error, ValueError) and "env.user.max_model_len (64)" in str(error)


class _CountingModel:
    """Stands in for the engine (the real one is tests/envs/test_envs_on_ray.py): records how
    many requests each call served."""

    def __init__(self, fail: bool = False):
        self.batches: list[int] = []
        self.fail = fail

    def reply(self, requests):
        self.batches.append(len(requests))
        if self.fail:
            raise RuntimeError("engine died")
        return [f"reply {seed}" for _, seed in requests]


def test_user_server_answers_requests_that_arrive_together_in_one_engine_call():
    import asyncio

    from rollout_workers.user_model import UserModelServer

    async def ask(server, n):
        return await asyncio.gather(*(server.reply([{"role": "user", "content": "hi"}], seed) for seed in range(n)),
                                    return_exceptions=True)

    model = _CountingModel()
    server = UserModelServer({}, model=model)
    assert asyncio.run(ask(server, 4)) == [f"reply {s}" for s in range(4)]
    assert model.batches == [4] and server.engine_calls() == [(4, 4)]
    broken = UserModelServer({}, model=_CountingModel(fail=True))
    answers = asyncio.run(ask(broken, 3))
    assert all(isinstance(a, RuntimeError) and "engine died" in str(a) for a in answers)  # every waiter fails, none hangs
