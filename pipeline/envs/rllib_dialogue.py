"""RLlib on rayppo's dialogue environments: a dialogue-act policy for the memory task.

RLlib's learners have no FSDP or LLM support, so LLM policies stay on rayppo's engines and
learner group; what RLlib can learn is a *dialogue policy* over a discrete action set. Here
the action is which dialogue act answers the user's last message, and each act is rendered as
a canned reply:

====================  ========================================================================
``acknowledge``       "Noted. Your name is Alice." (echoes a stated detail)
``answer_question``   the shop's canned answer to a small-talk question ("Shipping takes ...")
``recall``            "Your name is Alice." (looks the asked detail up in the conversation)
``forget``            "Sorry, I do not remember."
``okay``              "Okay."
``greet``             "Hello! How can I help you today?"
====================  ========================================================================

:class:`DialogueActsEnv` is built on the Gymnasium adapter of the memory task
(:class:`pipeline.envs.gym_adapter.DialogueGymEnv` over :class:`pipeline.envs.memory.MemoryEnv`):
the act's reply is the text action, the rewards are the memory task's (1.0 for the recall, 0.1
per on-task reply). Its observation is a bag of words of the user's last message over the
task's vocabulary. A random policy picks the right act at the question one time in six; PPO
learns to acknowledge details, answer small talk and recall at the question.

``python -m pipeline.envs.rllib_dialogue`` (``make rllib-example``) trains it with RLlib's PPO on
the new API stack (``PPOConfig().environment(...).env_runners(...)``, ``build_algo()``,
``train()``) and prints the learned policy's success against chance on held-out seeds.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Optional

import gymnasium as gym
import numpy as np

from pipeline.envs import memory
from pipeline.envs.gym_adapter import DialogueGymEnv

ACTS = ("acknowledge", "answer_question", "recall", "forget", "okay", "greet")
RLLIB_NAME = "rayppo-memory-acts"
_STATEMENT = re.compile(r"My (.+) is (.+)\.")
_QUESTION = re.compile(r"What is my (.+)\?")
_FAQ = {question: reply for question, reply, _ in memory.TOPICS.values()}


def _vocabulary() -> tuple[str, ...]:
    texts = [s for state, ask, _ in memory.SLOTS.values() for s in (state, ask)]
    texts += [question for question, _, _ in memory.TOPICS.values()]
    return tuple(sorted({w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t) if w != "{}"}))


VOCABULARY = _vocabulary()
_INDEX = {w: i for i, w in enumerate(VOCABULARY)}


def features(text: str) -> np.ndarray:
    """Bag of words of a user message over :data:`VOCABULARY` (float32 0/1)."""
    out = np.zeros(len(VOCABULARY), np.float32)
    for word in re.findall(r"[A-Za-z]+", text):
        index = _INDEX.get(word.lower())
        if index is not None:
            out[index] = 1.0
    return out


def act_reply(act: str, messages: list[dict]) -> str:
    """The canned reply of dialogue act ``act`` to the conversation ``messages``."""
    last = messages[-1]["content"] if messages else ""
    if act == "acknowledge":
        stated = _STATEMENT.fullmatch(last)
        return f"Noted. Your {stated.group(1)} is {stated.group(2)}." if stated else "Noted."
    if act == "answer_question":
        return _FAQ.get(last, "I can help with that.")
    if act == "recall":
        asked = _QUESTION.fullmatch(last)
        if asked:
            for message in reversed(messages[:-1]):
                stated = _STATEMENT.fullmatch(message["content"]) if message["role"] == "user" else None
                if stated and stated.group(1) == asked.group(1):
                    return f"Your {asked.group(1)} is {stated.group(2)}."
        return "I do not know."
    if act == "forget":
        return memory.FORGET_REPLY
    if act == "okay":
        return memory.OFF_TASK_REPLY
    if act == "greet":
        return "Hello! How can I help you today?"
    raise ValueError(f"unknown dialogue act {act!r}; expected one of {list(ACTS)}")


class DialogueActsEnv(gym.Env):
    """The memory task with discrete dialogue acts (see the module docstring). ``config``
    (RLlib's ``env_config``): ``env_kwargs`` for :class:`MemoryEnv`, ``max_turns``."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, config: Optional[dict] = None):
        config = dict(config or {})
        self.text_env = DialogueGymEnv(memory.__name__ + ":MemoryEnv", config.get("env_kwargs"),
                                       max_turns=config.get("max_turns", 8))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (len(VOCABULARY),), np.float32)
        self.action_space = gym.spaces.Discrete(len(ACTS))
        self.messages: list[dict] = []

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        _, info = self.text_env.reset(seed=seed, options=options)
        self.messages = info["messages"]
        return features(self.messages[-1]["content"]), {}

    def step(self, action):
        reply = act_reply(ACTS[int(action)], self.messages)
        _, reward, terminated, truncated, info = self.text_env.step(reply)
        self.messages = info["messages"]
        done = terminated or truncated
        extra = {"success": info["env_info"].get("metrics", {}).get("success", 0.0)} if done else {}
        observation = features("" if done else self.messages[-1]["content"])
        return observation, reward, terminated, truncated, extra

    def render(self) -> str:
        return self.text_env.render()


def register_rllib(name: str = RLLIB_NAME) -> str:
    """Register :class:`DialogueActsEnv` with ``ray.tune.register_env``."""
    from ray.tune import register_env

    register_env(name, lambda env_config: DialogueActsEnv(dict(env_config)))
    return name


def ppo_config(seed: int = 0, num_env_runners: int = 1, batch_size: int = 400, lr: float = 3e-3):
    """RLlib PPO on the new API stack for :class:`DialogueActsEnv`: a small MLP, one env
    runner, the learner in the driver process."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .environment(register_rllib(), env_config={"max_turns": 8})
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=1, num_cpus_per_env_runner=0)
        .learners(num_learners=0)
        .training(lr=lr, train_batch_size_per_learner=batch_size, minibatch_size=100, num_epochs=4,
                  gamma=0.99, lambda_=0.95, entropy_coeff=0.01)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32], fcnet_activation="tanh"))
        .debugging(seed=seed)
    )


def evaluate(policy, seeds: list[int]) -> dict[str, float]:
    """Success at the question and mean return of ``policy(observations) -> acts`` over one
    conversation per seed."""
    env = DialogueActsEnv()
    successes, returns = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done, info = 0.0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(int(policy(obs[None])[0]))
            total += reward
            done = terminated or truncated
        successes.append(info.get("success", 0.0))
        returns.append(total)
    return {"success": float(np.mean(successes)), "return": float(np.mean(returns))}


def greedy_policy(algo):
    """The trained module's most likely act for a batch of observations."""
    import torch

    module = algo.get_module()

    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = module.forward_inference({"obs": torch.as_tensor(observations)})["action_dist_inputs"]
        return logits.argmax(-1).numpy()

    return act


def random_policy(seed: int):
    rng = np.random.default_rng(seed)
    return lambda observations: rng.integers(len(ACTS), size=len(observations))


def train(iterations: int = 8, seed: int = 0, num_env_runners: int = 1, eval_episodes: int = 200,
          log=print) -> dict[str, float]:
    """Train with PPO; return the learned and the random policy's held-out success and return
    (held-out: conversation seeds the training never draws)."""
    algo = ppo_config(seed, num_env_runners).build_algo()
    start = time.perf_counter()
    try:
        for i in range(iterations):
            result = algo.train()
            episode_return = result["env_runners"].get("episode_return_mean", float("nan"))
            log(f"iteration {i + 1}: episode return {episode_return:.3f} ({time.perf_counter() - start:.1f} s)")
        seeds = list(range(10**6, 10**6 + eval_episodes))
        learned = evaluate(greedy_policy(algo), seeds)
    finally:
        algo.stop()
    chance = evaluate(random_policy(seed), seeds)
    return {"learned_success": learned["success"], "learned_return": learned["return"],
            "random_success": chance["success"], "random_return": chance["return"],
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    import ray

    parser = argparse.ArgumentParser(description="RLlib PPO learns a dialogue-act policy on the memory task.")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-env-runners", type=int, default=1)
    args = parser.parse_args(argv)
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, args.num_env_runners + 1), include_dashboard=False, logging_level="warning")
    try:
        out = train(args.iterations, args.seed, args.num_env_runners)
    finally:
        ray.shutdown()
    print(f"held-out success: learned {out['learned_success']:.2f}, random {out['random_success']:.2f} "
          f"(return {out['learned_return']:.2f} vs {out['random_return']:.2f}) in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
