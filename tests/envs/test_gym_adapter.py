"""The Gymnasium adapter: Gymnasium's own checker, episodes, failures, registration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from pipeline.envs import gym_adapter, memory
from pipeline.envs.gym_adapter import DialogueGymEnv, render_text
from pipeline.envs.rllib_dialogue import ACTS, DialogueActsEnv, act_reply, features

HERE = "tests.envs.envs_for_tests"


def test_passes_gymnasiums_env_checker():
    env_id = gym_adapter.register()
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=5)
    assert obs in env.observation_space and isinstance(info["messages"], list)
    check_env(DialogueGymEnv(f"{HERE}:AsyncCountingEnv"), skip_render_check=True)  # async envs too
    check_env(DialogueActsEnv(), skip_render_check=True)


def test_episode_with_text_actions_earns_the_memory_rewards():
    env = DialogueGymEnv()  # the memory task, dialogues drawn from the seed
    obs, info = env.reset(seed=1)
    plan = env.session.env.plan
    assert obs == f"user: {memory.user_turns(plan)[0]}"
    rewards, terminated, truncated = [], False, False
    for reply in memory.perfect_replies(plan):
        obs, reward, terminated, truncated, info = env.step(reply)
        rewards.append(reward)
    assert rewards == pytest.approx([0.1] * (plan["distance"] + 1) + [1.0])
    assert terminated and not truncated and info["env_info"]["metrics"]["success"] == 1.0
    assert obs.splitlines()[-1] == f"assistant: {memory.answer_sentence(plan)}"
    assert env.reset(seed=1)[0] == env.reset(seed=1)[0] != env.reset(seed=2)[0]


def test_rows_conversation_reward_truncation_and_failures():
    rows = [{"messages": [{"role": "user", "content": "hi"}]}]
    env = DialogueGymEnv(f"{HERE}:CountingEnv", {"turns": 2}, rows=rows)
    env.reset(seed=0)
    assert env.step("a b")[1:4] == (2.0, False, False)
    assert env.step("a")[1:4] == (11.0, True, False)  # turn reward + conversation reward
    short = DialogueGymEnv(f"{HERE}:CountingEnv", {"turns": 5}, max_turns=1)
    short.reset(seed=0)
    assert short.step("x")[2:4] == (False, True)  # rayppo's limit: truncated, not terminated
    failing = DialogueGymEnv(f"{HERE}:RaisingEnv")
    failing.reset(seed=0)
    _, reward, terminated, _, info = failing.step("boom")
    assert (reward, terminated, info["unscorable"]) == (0.0, True, True)
    assert "RuntimeError: the service is down" in info["error"]
    with pytest.raises(ValueError, match="env.class='tests.envs.envs_for_tests:Nope'"):
        DialogueGymEnv(f"{HERE}:Nope")


def test_observation_stays_inside_the_text_space():
    text = render_text([{"role": "user", "content": "café ünïcode " + "x" * 50}], max_chars=20)
    assert len(text) == 20 and text.endswith("x" * 20)
    assert render_text([{"role": "user", "content": "é"}], 99) == "user: ?"
    env = DialogueGymEnv(max_observation_chars=16)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space and len(obs) <= 16


def test_dialogue_acts_render_canned_replies():
    statement = [{"role": "user", "content": "My order number is 4821."}]
    assert act_reply("acknowledge", statement) == "Noted. Your order number is 4821."
    history = statement + [{"role": "assistant", "content": "Okay."}, {"role": "user", "content": "What is my order number?"}]
    assert act_reply("recall", history) == "Your order number is 4821."
    assert act_reply("answer_question", [{"role": "user", "content": "How can I pay?"}]) == "You can pay by card or cash."
    assert act_reply("recall", statement) == "I do not know."
    assert features("What is my name?").sum() == 4 and features("Alice 4821").sum() == 0
    env = DialogueActsEnv()
    obs, _ = env.reset(seed=4)
    assert obs.dtype == np.float32 and obs in env.observation_space
    # The right act at every turn solves the task: acknowledge, answer small talk, recall.
    distance = env.text_env.session.env.plan["distance"]
    total = 0.0
    for act in ["acknowledge"] + ["answer_question"] * distance + ["recall"]:
        obs, reward, terminated, truncated, info = env.step(ACTS.index(act))
        total += reward
    assert terminated and info["success"] == 1.0 and total == pytest.approx(1.0 + 0.1 * (distance + 1))


def test_register_with_rllib():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from pipeline.envs import rllib_dialogue

    name = gym_adapter.register_rllib()
    creator = _global_registry.get(ENV_CREATOR, name)
    assert isinstance(creator({"env_class": f"{HERE}:CountingEnv"}), DialogueGymEnv)
    acts = _global_registry.get(ENV_CREATOR, rllib_dialogue.register_rllib())
    assert isinstance(acts({}), DialogueActsEnv)
