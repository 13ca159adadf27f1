"""The built-in support chat task: seeded data, the gold rule, demonstrations and pairs."""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter

import pytest

from pipeline import tasks
from pipeline.config import load_config
from pipeline.data.conversations import check_conversation
from pipeline.data.preferences import pair_from_row
from pipeline.envs import support

FACTS = {"item": "lamp", "status": "shipped", "day": "friday", "carrier": "dhl"}
PROMPT = support.context_text(FACTS, ["day", "item", "status", "carrier"]) + "\nWhen will my order arrive?"


def _rows(n=200, seed=0):
    return [row for row, _ in zip(support.iter_rows(seed), range(n))]


def test_rows_are_seeded_and_self_consistent():
    assert _rows(50, 3) == _rows(50, 3) and _rows(50, 3) != _rows(50, 4)
    for row in _rows():
        meta = row["metadata"]
        assert support.parse_facts(row["prompt"]) == meta["facts"]
        assert row["answer"] == meta["facts"][meta["field"]]
        assert all(support.gold_score(row["prompt"], ref, row["answer"]) == 1.0 for ref in row["references"])


def test_prompt_rows_through_the_data_config():
    cfg = load_config(None, ["data.task=support", "data.num_train=30", "data.num_eval=10"])
    train, eval_ = tasks.prompt_splits(cfg.data)
    assert len(train) == 30 and len(eval_) == 10
    row = eval_[0]
    assert row.messages[0]["role"] == "user" and row.prompt_text.startswith("Context: ")
    assert row.references and row.metadata["field"] in support.FIELDS
    assert not {r.prompt_text for r in train} & {r.prompt_text for r in eval_}


@pytest.mark.parametrize(
    "reply, parts",
    [
        ("Hello! It arrives friday. Thanks for waiting.", {"fact": 1.0, "polite": 1.0, "concise": 1.0}),
        ("It arrives friday.", {"fact": 1.0, "polite": 0.0, "concise": 1.0}),
        ("Hi there! It arrives friday.", {"fact": 1.0, "polite": 0.5, "concise": 1.0}),
        ("Hello! It arrives tuesday. Thanks for waiting.", {"fact": 0.0, "polite": 1.0, "concise": 1.0}),
        ("Hello! It ships with dhl. Thanks for waiting.", {"fact": 0.0, "polite": 1.0, "concise": 1.0}),
        ("Hello! It arrives friday or monday. Thanks for waiting.", {"fact": 0.5, "polite": 1.0, "concise": 1.0}),
        ("Ugh. It arrives friday. Thanks for waiting.", {"fact": 1.0, "polite": 0.0, "concise": 1.0}),
        (
            "Hello! It arrives friday. Let me tell you about our store. Thanks for waiting.",
            {"fact": 1.0, "polite": 1.0, "concise": 0.6},  # 14 words: 2 - 14/10
        ),
        ("", {"fact": 0.0, "polite": 0.0, "concise": 1.0}),
    ],
)
def test_gold_rule_parts(reply, parts):
    got = support.gold_components(FACTS, "friday", reply)
    assert {k: got[k] for k in parts} == pytest.approx(parts)
    expected = 0.5 * parts["fact"] + 0.25 * parts["polite"] + 0.25 * parts["concise"]
    assert got["score"] == pytest.approx(expected)
    assert support.gold_score(PROMPT, reply, "friday") == pytest.approx(expected)
    assert tasks.verify("support", reply, "friday", PROMPT) == pytest.approx(expected)


def test_concision_reaches_zero_at_twice_the_limit():
    filler = " ".join(["word"] * 30)
    assert support.gold_components(FACTS, "friday", "It arrives friday. " + filler)["concise"] == 0.0


def test_gold_rejects_prompts_it_cannot_read():
    with pytest.raises(ValueError, match="no 'Context: ...' line"):
        support.gold_score("When will it arrive?", "friday", "friday")
    with pytest.raises(ValueError, match="needs the row's answer"):
        support.gold_score(PROMPT, "friday", None)


def test_demonstrations_are_mixed_quality_with_second_turns():
    rows = _rows(600)
    convs = support.sft_conversations(rows, seed=1)
    assert convs == support.sft_conversations(rows, seed=1)
    first_replies = [c["messages"][1]["content"] for c in convs]
    golds = [support.gold_score(r["prompt"], reply, r["answer"]) for r, reply in zip(rows, first_replies)]
    # Mediocre on average (room for RL), yet with perfect and bad examples.
    assert 0.5 < statistics.mean(golds) < 0.7
    assert max(golds) == 1.0 and min(golds) < 0.3
    two_turn = [c for c in convs if len(c["messages"]) == 4]
    assert 0.2 < len(two_turn) / len(convs) < 0.4
    for conv in convs:
        check_conversation(conv["messages"], "demo")


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_pairs_are_labelled_by_gold_with_noise(noise):
    rows = _rows(1000)
    pairs = support.preference_pairs(rows, seed=2, label_noise=noise)
    assert len(pairs) == len(rows)
    flipped = 0
    for row, raw in zip(rows, pairs):
        pair = pair_from_row(raw, "task")
        chosen, rejected = (support.gold_score(row["prompt"], side[0]["content"], row["answer"]) for side in (pair.chosen, pair.rejected))
        assert abs(chosen - rejected) >= 0.05
        flipped += chosen < rejected
    assert flipped / len(rows) == pytest.approx(noise, abs=0.04)


def test_pairs_name_what_separates_their_replies():
    facts = {"item": "lamp", "status": "shipped", "day": "friday", "carrier": "ups"}
    right, made_up, other = "Hello! It arrives friday.", "It arrives monday. Happy to help.", "It ships with ups."
    assert [support.fact_kind(facts, "day", r) for r in (right, made_up, other)] == ["right", "made-up", "other-question"]
    assert support.pair_group(facts, "day", made_up, right) == "right|made-up"
    assert support.pair_group(facts, "day", other, made_up) == "other-question|made-up"
    assert support.pair_group(facts, "day", right, "Ugh. It arrives friday.") == "same-fact"
    rows = _rows(300)
    groups = Counter(raw["group"] for raw in support.preference_pairs(rows, seed=2))
    # Every kind of pair is common enough to be measured on a held-out set of 200.
    assert set(groups) == {"same-fact", "right|made-up", "right|other-question", "other-question|made-up"}
    assert min(groups.values()) >= 20
    assert pair_from_row(support.preference_pairs(rows[:1], seed=2)[0], "task").group in groups


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_contrast_pairs_differ_only_in_the_fact(noise):
    rows = _rows(600)
    pairs = support.contrast_pairs(rows, seed=3, label_noise=noise)
    assert pairs == support.contrast_pairs(rows, seed=3, label_noise=noise) and len(pairs) == len(rows)
    sentences = re.compile(r"(?<=[.!?]) ")
    flipped, groups = 0, Counter()
    for row, raw in zip(rows, pairs):
        pair = pair_from_row(raw, "task")
        a, b = pair.chosen[0]["content"], pair.rejected[0]["content"]
        # Same greeting, fillers and closing; one sentence, the fact, differs.
        sa, sb = sentences.split(a), sentences.split(b)
        assert len(sa) == len(sb) and sum(x != y for x, y in zip(sa, sb)) == 1
        parts = [support.gold_components(row["metadata"]["facts"], row["answer"], r) for r in (a, b)]
        assert parts[0]["polite"] == parts[1]["polite"] and {parts[0]["fact"], parts[1]["fact"]} == {0.0, 1.0}
        flipped += parts[0]["fact"] == 0.0
        groups[raw["group"]] += 1
    assert flipped / len(rows) == pytest.approx(noise, abs=0.05)
    assert groups["right|made-up"] == 3 * groups["right|other-question"] == 3 * len(rows) // 4


def test_contrast_pairs_join_the_rm_stage_training_pairs_only():
    from pipeline.stages.rm import load_pair_splits

    overrides = ["data.task=support", "data.num_train=50", "rm.num_pairs=40", "rm.num_eval_pairs=20"]
    plain, plain_eval = load_pair_splits(load_config(None, overrides))
    train, held_out = load_pair_splits(load_config(None, [*overrides, "rm.contrast_pairs=1.5"]))
    assert train[:40] == plain and len(train) == 100 and held_out == plain_eval
    assert {p.group for p in train[40:]} == {"right|made-up", "right|other-question"}
    with pytest.raises(ValueError, match=r"rm\.contrast_pairs: must be >= 0"):
        load_config(None, ["rm.contrast_pairs=-0.5"])
    with pytest.raises(ValueError, match=r"rm\.contrast_pairs: only the support task"):
        load_config(None, ["rm.contrast_pairs=0.5", "rm.train_files=[pairs.jsonl]"])


def test_pair_noise_is_bounded():
    with pytest.raises(ValueError, match=r"rm\.label_noise"):
        support.preference_pairs(_rows(2), seed=0, label_noise=0.5)


def test_corpus_covers_every_phrase():
    text = " ".join(m["content"] for chat in support.corpus_chats(400, 0) for m in chat).lower()
    words = [v for values in support.VALUES.values() for v in values]
    phrases = support.GREETINGS + support.CLOSINGS + support.RUDE_OPENERS + support.FILLERS
    assert all(w in text for w in words) and all(p.lower() in text for p in phrases)


def test_sample_reply_follows_its_quality():
    rng = random.Random(0)
    perfect = support.ReplyQuality(fact=(1, 0, 0), opener=(1, 0, 0), closing=1.0, fillers=(1, 0, 0))
    for _ in range(20):
        assert support.gold_components(FACTS, "friday", support.sample_reply(rng, FACTS, "day", perfect))["score"] == 1.0
