"""The memory task: seeded splits, the scripted user, rewards, SFT demonstrations, data.task."""

from __future__ import annotations

import collections
import json
import random

import pytest

from pipeline import tasks
from pipeline.config import load_config
from pipeline.config.envs import EnvConfig
from pipeline.data import PromptRow, load_rows
from pipeline.envs import memory
from pipeline.envs.base import load_env


def play(row, replies_for):
    """Run MemoryEnv on ``row`` through a session; ``replies_for(plan)`` gives the replies."""
    factory = load_env(EnvConfig(class_path="pipeline.envs.memory:MemoryEnv"), row)
    session = factory.make()
    session.reset(row, seed=0)
    for reply in replies_for(row.metadata["memory"]):
        result = session.step(reply)
    return session, result, factory.metrics()


def test_splits_are_seeded_disjoint_and_cover_every_distance():
    train, eval_rows = memory.prompt_splits(300, 60, seed=0)
    again_train, again_eval = memory.prompt_splits(500, 60, seed=0)
    assert [r.metadata for r in eval_rows] == [r.metadata for r in again_eval]  # held-out fixed
    assert [r.metadata for r in train] == [r.metadata for r in again_train[:300]]
    assert [r.metadata for r in memory.prompt_splits(300, 60, seed=1)[1]] != [r.metadata for r in eval_rows]
    signature = lambda r: json.dumps(r.metadata["memory"], sort_keys=True)  # noqa: E731
    assert not {signature(r) for r in train} & {signature(r) for r in eval_rows}
    assert len({signature(r) for r in train}) == 300
    distances = collections.Counter(r.metadata["memory"]["distance"] for r in train)
    assert set(distances) == {1, 2, 3} and min(distances.values()) > 60
    assert {r.metadata["memory"]["slot"] for r in eval_rows} == set(memory.SLOTS)
    row = eval_rows[0]
    plan = row.metadata["memory"]
    assert row.messages == [{"role": "user", "content": memory.user_turns(plan)[0]}]
    assert row.answer == plan["value"] and row.references == [memory.answer_sentence(plan)]


def test_perfect_dialogue_earns_recall_plus_on_task_rewards():
    _, eval_rows = memory.prompt_splits(0, 30, seed=3)
    for row in eval_rows:
        session, last, metrics = play(row, memory.perfect_replies)
        d = row.metadata["memory"]["distance"]
        assert session.turn_rewards == pytest.approx([0.1] * (d + 1) + [1.0])
        assert last.done and not last.truncated and session.turns == d + 2
        assert metrics["env/success"] == 1.0 and metrics[f"env/success/distance_{d}"] == 1.0


def test_forgetting_or_guessing_every_value_earns_no_recall():
    row = memory.plan_row({"slot": "name", "value": "Maya", "topics": ["sale", "hours"], "distance": 2}, "t")
    forget = lambda plan: memory.perfect_replies(plan)[:-1] + [memory.FORGET_REPLY]  # noqa: E731
    session, _, metrics = play(row, forget)
    assert session.turn_rewards[-1] == 0.0 and metrics["env/success"] == 0.0
    every_name = lambda plan: memory.perfect_replies(plan)[:-1] + [" ".join(memory.NAMES)]  # noqa: E731
    assert play(row, every_name)[0].turn_rewards[-1] == 0.0
    order = {"slot": "order", "value": "4821", "topics": [], "distance": 0}
    assert memory.recalled(order, "Your order number is 4821.")
    assert not memory.recalled(order, "It is 4821 or 4822.")
    assert not memory.recalled(order, "Your order number is 48210.")


def test_on_task_rule():
    plan = {"slot": "color", "value": "green", "topics": ["shipping", "weather"], "distance": 2}
    assert memory.on_task(plan, 0, "Noted. Your favorite color is green.")
    assert not memory.on_task(plan, 0, "Noted.")
    assert memory.on_task(plan, 1, "Shipping takes a week.")
    assert not memory.on_task(plan, 1, "The weather is nice.")  # answers the wrong question
    assert not memory.on_task(plan, 2, "weather " * 13)  # rambling
    assert not memory.on_task(plan, 2, "")


def test_env_draws_a_dialogue_from_the_seed_without_metadata():
    env = memory.MemoryEnv(min_distance=2, max_distance=2)
    row = PromptRow(messages=[{"role": "user", "content": "x"}], answer=None, source="any")
    opening = env.reset(row, seed=11)
    assert env.plan["distance"] == 2 and opening[0]["content"] == memory.user_turns(env.plan)[0]
    assert memory.MemoryEnv().reset(row, 11) == memory.MemoryEnv().reset(row, 11)
    with pytest.raises(ValueError, match="max_distance"):
        memory.MemoryEnv(max_distance=99)


def test_bad_plan_in_metadata_names_the_row():
    row = PromptRow(messages=[{"role": "user", "content": "x"}], answer=None, source="data.jsonl:row 4",
                    metadata={"memory": {"slot": "shoe size", "value": "9", "topics": []}})
    with pytest.raises(ValueError, match="env.class=pipeline.envs.memory:MemoryEnv: trial reset on data.jsonl:row 4 raised ValueError: data.jsonl:row 4: memory plan slot 'shoe size'"):
        load_env(EnvConfig(class_path="pipeline.envs.memory:MemoryEnv"), row)


def test_sft_demonstrations_are_of_mixed_quality_by_distance():
    convs = memory.sft_conversations(3000, seed=0, num_eval=200)
    forgot, off_task = collections.defaultdict(list), []
    held_out = {json.dumps(r.metadata["memory"]) for r in memory.prompt_splits(0, 200, 0)[1]}
    for conv in convs:
        plan = conv["metadata"]["memory"]
        assert json.dumps(plan) not in held_out
        messages = conv["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (plan["distance"] + 2)
        assert [m["content"] for m in messages[::2]] == memory.user_turns(plan)
        forgot[plan["distance"]].append(messages[-1]["content"] == memory.FORGET_REPLY)
        off_task += [m["content"] == memory.OFF_TASK_REPLY for m in messages[3:-2:2]]
    for distance, rate in memory.FORGET_RATES.items():
        assert sum(forgot[distance]) / len(forgot[distance]) == pytest.approx(rate, abs=0.05)
    assert sum(off_task) / len(off_task) == pytest.approx(memory.OFF_TASK_RATE, abs=0.03)
    assert convs == memory.sft_conversations(3000, seed=0, num_eval=200)


def test_data_task_memory_through_the_pipeline(tmp_path):
    cfg = load_config(None, ["data.task=memory", "data.num_train=50", "data.num_eval=10", "sft.num_examples=20"])
    train, eval_rows = tasks.prompt_splits(cfg.data)
    assert (len(train), len(eval_rows)) == (50, 10)
    assert eval_rows[0].metadata == memory.prompt_splits(0, 10, 0)[1][0].metadata
    from pipeline.stages import sft
    from pipeline.stages.init_model import _corpus

    convs = sft.load_conversations(cfg, "train")
    assert len(convs) == 20 and sum(m["role"] == "assistant" for m in convs[0].messages) >= 3
    eval_convs = sft.load_conversations(cfg, "eval")
    assert all(c.messages[-1]["content"] != memory.FORGET_REPLY for c in eval_convs)
    assert tasks.verify("memory", "Your name is Omar.", "Omar", "") == 1.0
    assert tasks.verify("memory", "Sorry.", "Omar", "") == 0.0
    cfg.init.corpus_size = 5
    texts = _corpus(cfg.init, cfg.data)
    assert len(texts) == 5 and all("<|im_start|>assistant" in t for t in texts)


def test_written_files_load_as_prompt_rows_and_conversations(tmp_path):
    paths = memory.write_dataset(str(tmp_path), num_train=20, num_eval=5, num_sft=8, seed=0)
    rows = load_rows(paths["train"])
    assert len(rows) == 20 and rows[0].metadata["memory"]["slot"] in memory.SLOTS
    assert [r.metadata for r in load_rows(paths["eval"])] == [r.metadata for r in memory.prompt_splits(20, 5, 0)[1]]
    from pipeline.data.conversations import load_conversations

    assert len(load_conversations(paths["sft"])) == 8


def test_corpus_has_every_reply_kind():
    texts = [m["content"] for chat in memory.corpus_texts(400, 0) for m in chat]
    assert memory.FORGET_REPLY in texts and memory.OFF_TASK_REPLY in texts
    assert any(t.startswith("Noted.") for t in texts) and any(t.startswith("Your ") for t in texts)
    rng = random.Random(0)
    assert memory.make_plan(rng)["distance"] in (1, 2, 3)


def test_a_dialogue_cut_short_counts_as_a_failure():
    row = memory.plan_row({"slot": "name", "value": "Maya", "topics": ["sale", "hours"], "distance": 2}, "t")
    factory = load_env(EnvConfig(class_path="pipeline.envs.memory:MemoryEnv", max_turns=2), row)
    session = factory.make()
    session.reset(row, 0)
    session.step("Noted. Your name is Maya.")
    cut = session.step("Yes, the sale ends on Friday.")
    assert cut.truncated and session.turn_rewards == [0.1, 0.1]
    metrics = factory.metrics()
    assert metrics["env/success"] == 0.0 and metrics["env/success/distance_2"] == 0.0
