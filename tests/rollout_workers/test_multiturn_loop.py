"""The multi-turn rollout loop on the transformers engine (no Ray): trajectories, masks,
rewards, limits, failures, batched steps, seeds, and conversations that do not wait for each
other. The vLLM engine runs the same loop in tests/integration/test_multiturn.py."""

from __future__ import annotations

import math

import pytest

from pipeline.config import load_config
from pipeline.data import PromptRow
from pipeline.envs.base import load_env
from rollout_workers.conversation_loop import ConversationLoop, Limits
from rollout_workers.turn_tokens import TurnTokens
from rollout_workers.types import ProbeBatch, Sampling
from tests.rollout_workers import dialogue_envs

ENVS = "tests.rollout_workers.dialogue_envs"


@pytest.fixture(scope="module")
def engine(tiny_model):
    from rollout_workers.hf_engine import HFEngine

    return HFEngine(tiny_model, seed=0)


@pytest.fixture(scope="module")
def tokens(tiny_model):
    from transformers import AutoTokenizer

    return TurnTokens(AutoTokenizer.from_pretrained(tiny_model), tiny_model)


def rows(n: int, **metadata) -> list[PromptRow]:
    return [PromptRow([{"role": "user", "content": f"Hello {i}."}], None, f"row {i}", metadata=dict(metadata))
            for i in range(n)]


def make_loop(engine, tokens, env: str, *overrides: str) -> ConversationLoop:
    cfg = load_config(None, [f"env.class={ENVS}:{env}", "env.max_tokens_per_turn=5", *overrides])
    return ConversationLoop(engine, tokens, load_env(cfg.env, rows(1)[0]), Limits.from_config(cfg))


def test_trajectory_is_one_sequence_of_engine_and_env_tokens(engine, tokens):
    loop = make_loop(engine, tokens, "CountingEnv")
    probe = ProbeBatch([[1, 2, 3]], [[4, 5]])
    batch = loop.run(rows(2), Sampling(n=2), step=0, base_seed=0, probe=probe)
    assert len(batch) == 4 and batch.prompt_index == [0, 0, 1, 1]
    assert batch.probe_scores == [engine.score([[1, 2, 3]], [[4, 5]])]
    for i in range(4):
        mask, ends, response = batch.loss_masks[i], batch.turn_ends[i], batch.response_ids[i]
        assert len(mask) == len(response) == len(batch.response_logprobs[i])
        assert len(ends) == 3 and batch.turn_rewards[i] == [0.1, 0.1, 0.1]
        assert batch.conversation_rewards[i] == 1.0 and batch.finish_reasons[i] == "stop"
        assert all(mask[e] == 1 for e in ends) and ends[-1] == len(response) - 1
        # Environment tokens: mask 0, logprob 0; assistant tokens: the engine's logprobs.
        assert all((lp == 0.0) == (m == 0) for lp, m in zip(batch.response_logprobs[i], mask))
        # The assistant tokens are the engine's: scoring them teacher-forced gives its logprobs.
        start = 0
        for end in ends:
            first = next(j for j in range(start, end + 1) if mask[j])
            context = batch.prompt_ids[i] + response[:first]
            scored = engine._logprobs([context], [response[first : end + 1]], 1.0)[0]
            assert scored == pytest.approx(batch.response_logprobs[i][first : end + 1], abs=1e-4)
            start = end + 1
        text = tokens.tokenizer.decode(batch.prompt_ids[i] + response)
        assert text.count("<|im_start|>user\nSay 1.<|im_end|>") == 1 and "Say 2." in text
        conversation = batch.conversations[i]
        assert [m["role"] for m in conversation] == ["user", "assistant"] * 3
        assert batch.env_infos[i]["turns"] == 3 and "success" in batch.env_infos[i]
    # A group shares its opening (the shared prompt of prompt-once), not its samples.
    assert batch.prompt_ids[0] == batch.prompt_ids[1] and batch.response_ids[0] != batch.response_ids[1]


def test_seeds_depend_on_the_conversation_not_on_the_split_or_the_schedule(engine, tokens):
    loop = make_loop(engine, tokens, "CountingEnv")
    whole = loop.run(rows(4), Sampling(n=2), step=3, base_seed=7)
    again = loop.run(rows(4), Sampling(n=2), step=3, base_seed=7, lockstep=True)
    first = loop.run(rows(4)[:1], Sampling(n=2), step=3, base_seed=7)
    rest = loop.run(rows(4)[1:], Sampling(n=2), step=3, base_seed=7, offset=1)
    assert again.response_ids == whole.response_ids
    assert first.response_ids + rest.response_ids == whole.response_ids
    other_step = loop.run(rows(4), Sampling(n=2), step=4, base_seed=7)
    assert other_step.response_ids != whole.response_ids


def test_each_conversation_advances_on_its_own(engine, tokens):
    """A conversation whose environment is slow does not hold the others back; in lockstep
    every conversation waits for it at every turn. Proven by the order of the environment's
    steps (dialogue_envs.GatedEnv), not by timing."""
    loop = make_loop(engine, tokens, "GatedEnv", "env.max_tokens_per_turn=2")
    fast = [f"row {i}" for i in range(3)]

    def run(hold: str, lockstep: bool) -> dict[tuple[str, str, int], int]:
        dialogue_envs.GatedEnv.log.clear()
        dialogue_envs.GatedEnv.others = len(fast)
        slow = PromptRow([{"role": "user", "content": "Slow."}], None, "slow", metadata={"hold": hold})
        batch = loop.run(rows(3) + [slow], Sampling(n=1), step=0, base_seed=0, lockstep=lockstep)
        assert [info["error"] for info in batch.env_infos] == [None] * 4
        assert [info["turns"] for info in batch.env_infos] == [3] * 4
        return {event: i for i, event in enumerate(dialogue_envs.GatedEnv.log)}

    # On its own: the slow conversation's first step is under way while the others play all
    # three turns to their end, which is what lets that step return (else it would raise).
    at = run("ended", lockstep=False)
    assert at[("start", "slow", 1)] < min(at[("end", row, 3)] for row in fast)
    assert max(at[("end", row, 3)] for row in fast) < at[("end", "slow", 1)]

    # Lockstep: the slow conversation ends each step last, and no conversation starts its next
    # step before that.
    at = run("step", lockstep=True)
    for step in (1, 2):
        assert max(at[("end", row, step)] for row in fast) < at[("end", "slow", step)]
        assert at[("end", "slow", step)] < min(at[("start", row, step + 1)] for row in fast)


def test_a_failing_step_makes_only_that_conversation_unscorable(engine, tokens):
    loop = make_loop(engine, tokens, "FlakyEnv")
    batch_rows = rows(2) + [PromptRow([{"role": "user", "content": "Hi."}], None, "bad", metadata={"fail": True})]
    batch = loop.run(batch_rows, Sampling(n=1), step=0, base_seed=0)
    assert [math.isnan(r) for r in batch.conversation_rewards] == [False, False, True]
    assert batch.env_infos[2]["unscorable"] and "the tool crashed" in batch.env_infos[2]["error"]
    assert len(batch.turn_ends[2]) == 2 and len(batch.turn_rewards[2]) == 2
    assert loop.factory.metrics()["env/unscorable"] == 1.0


def test_batched_steps_group_the_turns_that_end_together(engine, tokens):
    dialogue_envs.BatchedEnv.calls.clear()
    loop = make_loop(engine, tokens, "BatchedEnv")
    batch = loop.run(rows(3), Sampling(n=2), step=0, base_seed=0, lockstep=True)
    assert all(len(e) == 3 for e in batch.turn_ends)
    # Lockstep: every turn's six steps go out in one step_batch call.
    assert dialogue_envs.BatchedEnv.calls == [6, 6, 6]


@pytest.mark.parametrize("limit, value", [("env.max_turns", 2), ("env.max_tokens_per_conversation", 40)])
def test_limits_end_a_conversation_the_environment_would_continue(engine, tokens, limit, value):
    loop = make_loop(engine, tokens, "EndlessEnv", f"{limit}={value}")
    batch = loop.run(rows(2), Sampling(n=1), step=0, base_seed=0)
    for i in range(2):
        assert batch.finish_reasons[i] == "length" and batch.env_infos[i]["truncated"]
        assert len(batch.response_ids[i]) <= (40 if limit.endswith("conversation") else 10_000)
        if limit == "env.max_turns":
            assert len(batch.turn_ends[i]) == 2
        assert not math.isnan(batch.conversation_rewards[i])


def test_an_opening_longer_than_the_prompt_limit_is_unscorable(engine, tokens):
    loop = make_loop(engine, tokens, "CountingEnv", "data.max_prompt_tokens=8")
    batch = loop.run(rows(1), Sampling(n=1), step=0, base_seed=0)
    assert math.isnan(batch.conversation_rewards[0]) and batch.response_ids == [[]]
    assert "data.max_prompt_tokens=8" in batch.env_infos[0]["error"]
