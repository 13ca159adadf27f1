"""The built-in memory task (``data.task: memory``, ``env.class: pipeline.envs.memory:MemoryEnv``).

Over several turns a scripted user gives a detail (a name, an order number, a favourite
colour), talks about something else for ``distance`` turns, then asks a question only that
detail answers::

    user       My order number is 4821.
    assistant  Noted. Your order number is 4821.
    user       How long does shipping take?          } ``distance`` turns of small talk
    assistant  Shipping takes three days.            }
    user       What is my order number?
    assistant  Your order number is 4821.

Rewards: the final reply earns ``recall_reward`` (1.0) when it contains the detail and no other
value of the same kind (listing every name does not pay); every earlier reply earns
``on_task_reward`` (0.1) when it stays on task: it acknowledges the detail, or mentions the topic
of the small-talk question, in at most :data:`ON_TASK_MAX_WORDS` words. The final step reports
``info["metrics"]``: ``success`` and ``success/distance_<d>``, so a run logs
``env/success/distance_2`` and the recipe's table shows success by the number of turns between
fact and question.

The data is seeded: :func:`prompt_splits` gives disjoint train / held-out rows (``metadata``
holds the dialogue plan, ``answer`` the detail), :func:`sft_conversations` scripted dialogues
with several assistant turns for SFT whose demonstrations are of **mixed quality**: with a
probability that grows with the distance (:data:`FORGET_RATES`) the demonstration forgets the
detail, and some small-talk replies wander off, so an SFT policy has room to improve. Every
sentence is short and regular, so a tiny model with a tokenizer trained on this text
(:func:`corpus_texts`) can learn it: the recall is a copy of the words after "is".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from typing import Any, Optional

from pipeline.data import PromptRow
from pipeline.envs.users import ScriptedUser

# slot -> (the user states it, the user asks for it, the perfect answer)
SLOTS: dict[str, tuple[str, str, str]] = {
    "name": ("My name is {}.", "What is my name?", "Your name is {}."),
    "order": ("My order number is {}.", "What is my order number?", "Your order number is {}."),
    "color": ("My favorite color is {}.", "What is my favorite color?", "Your favorite color is {}."),
}
NAMES = ("Alice", "Bruno", "Chen", "Dara", "Elena", "Farid", "Grace", "Hugo",
         "Ines", "Jonas", "Kira", "Liam", "Maya", "Nora", "Omar", "Priya")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
# topic -> (the user's small-talk question, the on-task reply, the word an on-task reply uses)
TOPICS: dict[str, tuple[str, str, str]] = {
    "shipping": ("How long does shipping take?", "Shipping takes three days.", "shipping"),
    "returns": ("Can I return an item?", "Yes, returns are free for a month.", "returns"),
    "hours": ("When are you open?", "We are open from nine to five.", "open"),
    "payment": ("How can I pay?", "You can pay by card or cash.", "pay"),
    "sale": ("Is there a sale now?", "Yes, the sale ends on Friday.", "sale"),
    "weather": ("Nice weather today, right?", "Yes, the weather is lovely today.", "weather"),
    "gifts": ("Do you wrap gifts?", "Yes, we wrap gifts for free.", "gifts"),
    "size": ("Do the shoes run small?", "The shoes run true to size.", "size"),
}
ACK = "Noted. {}"
"""The acknowledgement of a detail: "Noted. Your name is Alice." (the answer sentence)."""
FORGET_REPLY = "Sorry, I do not remember."
OFF_TASK_REPLY = "Okay."
ON_TASK_MAX_WORDS = 12
MIN_DISTANCE, MAX_DISTANCE = 1, 3
FORGET_RATES = {1: 0.2, 2: 0.5, 3: 0.8}
"""Share of SFT demonstrations that forget the detail, by distance (beyond the table: its
largest distance's rate). Above 0.5 a greedy SFT policy forgets at that distance, so RL can
raise held-out success by tens of points."""
OFF_TASK_RATE = 0.1
"""Share of small-talk demonstration replies that wander off ("Okay.")."""

_WORD = re.compile(r"[A-Za-z0-9]+")


def slot_values(slot: str) -> Optional[tuple[str, ...]]:
    """The values a slot takes (``None`` for order numbers: any four digits)."""
    return {"name": NAMES, "color": COLORS}.get(slot)


def _value(rng: random.Random, slot: str) -> str:
    values = slot_values(slot)
    return rng.choice(values) if values else str(rng.randint(1000, 9999))


def make_plan(rng: random.Random, min_distance: int = MIN_DISTANCE, max_distance: int = MAX_DISTANCE) -> dict:
    """One dialogue: the detail, ``distance`` small-talk topics, then the question."""
    if not 0 <= min_distance <= max_distance or max_distance > len(TOPICS):
        raise ValueError(
            f"memory task: distances must satisfy 0 <= min_distance ({min_distance}) <= "
            f"max_distance ({max_distance}) <= {len(TOPICS)} (the number of small-talk topics)"
        )
    slot = rng.choice(sorted(SLOTS))
    distance = rng.randint(min_distance, max_distance)
    return {
        "slot": slot,
        "value": _value(rng, slot),
        "topics": rng.sample(sorted(TOPICS), distance),
        "distance": distance,
    }


def check_plan(plan: Any, where: str) -> dict:
    """``plan`` if it is a well-formed dialogue plan; ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(plan, dict):
        raise ValueError(f"{where}: metadata 'memory' must be a dialogue plan object, got {plan!r:.80}")
    slot, value, topics = plan.get("slot"), plan.get("value"), plan.get("topics")
    if slot not in SLOTS:
        raise ValueError(f"{where}: memory plan slot {slot!r} is not one of {sorted(SLOTS)}")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: memory plan value must be a non-empty string, got {value!r}")
    if not isinstance(topics, list) or any(t not in TOPICS for t in topics):
        raise ValueError(f"{where}: memory plan topics {topics!r} must be a list of {sorted(TOPICS)}")
    return {"slot": slot, "value": value, "topics": list(topics), "distance": len(topics)}


def user_turns(plan: dict) -> list[str]:
    """What the scripted user says, in order: the detail, the small talk, the question."""
    state, ask, _ = SLOTS[plan["slot"]]
    return [state.format(plan["value"])] + [TOPICS[t][0] for t in plan["topics"]] + [ask]


def answer_sentence(plan: dict) -> str:
    return SLOTS[plan["slot"]][2].format(plan["value"])


def perfect_replies(plan: dict) -> list[str]:
    """The ideal assistant turn for each user turn."""
    return [ACK.format(answer_sentence(plan))] + [TOPICS[t][1] for t in plan["topics"]] + [answer_sentence(plan)]


# ---------------------------------------------------------------------------------------------
# Rewards


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def recalled(plan: dict, reply: str) -> bool:
    """The reply names the detail and no other value of its kind."""
    words = _words(reply)
    value = plan["value"].lower()
    if value not in words:
        return False
    values = slot_values(plan["slot"])
    if values is None:  # order numbers: no other four-digit number
        others = [w for w in words if len(w) == 4 and w.isdigit() and w != value]
    else:
        others = [w for w in words if w in {v.lower() for v in values} and w != value]
    return not others


def on_task(plan: dict, turn: int, reply: str) -> bool:
    """A reply before the question stays on task: short, acknowledging the detail (turn 0) or
    mentioning the small-talk topic (later turns)."""
    words = _words(reply)
    if not words or len(words) > ON_TASK_MAX_WORDS:
        return False
    if turn == 0:
        return plan["value"].lower() in words
    return TOPICS[plan["topics"][turn - 1]][2] in words


def turn_reward(plan: dict, turn: int, reply: str, recall_reward: float = 1.0, on_task_reward: float = 0.1) -> float:
    if turn == plan["distance"] + 1:
        return recall_reward if recalled(plan, reply) else 0.0
    return on_task_reward if on_task(plan, turn, reply) else 0.0


def success_metrics(plan: dict, final_reply: str) -> dict[str, float]:
    success = float(recalled(plan, final_reply))
    return {"success": success, f"success/distance_{plan['distance']}": success}


# ---------------------------------------------------------------------------------------------
# The environment


class MemoryEnv:
    """The memory task with its scripted user (see the module docstring).

    A row's ``metadata["memory"]`` (from :func:`prompt_splits`) fixes the dialogue; a row without
    one gets a dialogue drawn from ``seed``, so the environment also runs on any prompts (the
    Gymnasium adapter, a smoke test).
    """

    def __init__(
        self,
        recall_reward: float = 1.0,
        on_task_reward: float = 0.1,
        min_distance: int = MIN_DISTANCE,
        max_distance: int = MAX_DISTANCE,
    ):
        make_plan(random.Random(0), min_distance, max_distance)  # range check, before any run
        self.recall_reward = float(recall_reward)
        self.on_task_reward = float(on_task_reward)
        self.min_distance, self.max_distance = min_distance, max_distance
        self.plan: dict = {}
        self.turn = 0
        self.user = ScriptedUser([])

    def reset(self, row: PromptRow | None, seed: int) -> list[dict]:
        raw = (row.metadata or {}).get("memory") if row is not None else None
        if raw is not None:
            self.plan = check_plan(raw, row.source)
        else:
            self.plan = make_plan(random.Random(seed), self.min_distance, self.max_distance)
        self.turn = 0
        self.user = ScriptedUser(user_turns(self.plan))
        return [{"role": "user", "content": self.user.next_message()}]

    def step(self, messages: list[dict], assistant_reply: str):
        if not self.plan:
            raise RuntimeError("MemoryEnv.step before reset")
        reward = turn_reward(self.plan, self.turn, assistant_reply, self.recall_reward, self.on_task_reward)
        self.turn += 1
        if self.turn <= self.plan["distance"] + 1:
            return self.user.next_message(), reward, False, {}
        return None, reward, True, {"metrics": success_metrics(self.plan, assistant_reply)}

    def truncated_metrics(self) -> dict[str, float]:
        """A dialogue cut short before the question was answered is a failure."""
        return success_metrics(self.plan, "")


# ---------------------------------------------------------------------------------------------
# Data


def _signature(plan: dict) -> str:
    return json.dumps([plan["slot"], plan["value"], plan["topics"]])


def unique_plans(n: int, seed: int, exclude: set[str] = frozenset(), min_distance: int = MIN_DISTANCE,
                 max_distance: int = MAX_DISTANCE) -> list[dict]:
    """``n`` distinct plans (none in ``exclude``), the same for the same arguments."""
    rng, seen, plans = random.Random(seed), set(exclude), []
    for _ in range(50 * n + 10_000):
        if len(plans) == n:
            return plans
        plan = make_plan(rng, min_distance, max_distance)
        if _signature(plan) not in seen:
            seen.add(_signature(plan))
            plans.append(plan)
    raise ValueError(f"memory task: only {len(plans)} distinct dialogues found, {n} asked for")


def plan_row(plan: dict, source: str) -> PromptRow:
    return PromptRow(
        messages=[{"role": "user", "content": user_turns(plan)[0]}],
        answer=plan["value"],
        source=source,
        references=[answer_sentence(plan)],
        metadata={"memory": plan},
    )


def prompt_splits(num_train: int, num_eval: int, seed: int) -> tuple[list[PromptRow], list[PromptRow]]:
    """Disjoint train and held-out rows; held-out rows are drawn first, so they do not change
    with ``num_train``."""
    plans = unique_plans(num_eval + num_train, seed)
    eval_rows = [plan_row(p, f"task memory eval #{i}") for i, p in enumerate(plans[:num_eval], 1)]
    train_rows = [plan_row(p, f"task memory train #{i}") for i, p in enumerate(plans[num_eval:], 1)]
    return train_rows, eval_rows


def iter_rows(seed: int):
    """Endless ``{"prompt", "answer", "references", "metadata"}`` rows (not deduplicated; use
    :func:`prompt_splits` for disjoint splits), for :mod:`pipeline.tasks`."""
    rng = random.Random(seed)
    while True:
        plan = make_plan(rng)
        yield {"prompt": user_turns(plan)[0], "answer": plan["value"],
               "references": [answer_sentence(plan)], "metadata": {"memory": plan}}


def verify(completion: str, answer: str | None) -> float:
    """A single reply graded alone: 1.0 when it names ``answer`` (the rule reward of
    ``data.task: memory`` outside an environment; the environment grades whole dialogues)."""
    return float(answer is not None and answer.lower() in _words(completion))


def task_conversations(num_train: int, num_eval: int, seed: int, num_examples: int, split: str) -> list[dict]:
    """SFT conversations of ``data.task: memory``: mixed-quality demonstrations for ``train``
    (never on a held-out dialogue), perfect ones on the held-out dialogues for ``eval``."""
    if split == "train":
        return sft_conversations(num_examples, seed, num_eval=num_eval)
    _, eval_rows = prompt_splits(0, num_eval, seed)
    rng = random.Random(seed + 2)
    plans = [row.metadata["memory"] for row in eval_rows]
    return [{"messages": demonstration(p, rng, {p["distance"]: 0.0}, 0.0), "metadata": {"memory": p}} for p in plans]


def demonstration(plan: dict, rng: random.Random, forget_rates: dict[int, float] = FORGET_RATES,
                  off_task_rate: float = OFF_TASK_RATE) -> list[dict]:
    """A scripted conversation for SFT: every user turn with a demonstration reply, of mixed
    quality (it may forget the detail or wander off in small talk)."""
    replies = perfect_replies(plan)
    for i in range(1, len(replies) - 1):
        if rng.random() < off_task_rate:
            replies[i] = OFF_TASK_REPLY
    rate = forget_rates[min(forget_rates, key=lambda d: (abs(d - plan["distance"]), -d))]
    if rng.random() < rate:
        replies[-1] = FORGET_REPLY
    messages = []
    for user, reply in zip(user_turns(plan), replies):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def sft_conversations(n: int, seed: int, num_eval: int = 0, eval_seed: Optional[int] = None,
                      forget_rates: dict[int, float] = FORGET_RATES,
                      off_task_rate: float = OFF_TASK_RATE) -> list[dict]:
    """``n`` conversation rows ``{"messages", "metadata"}`` for SFT. With ``num_eval``, the
    first ``num_eval`` plans of ``eval_seed`` (the held-out split of :func:`prompt_splits`) are
    never used."""
    held_out = {_signature(p) for p in unique_plans(num_eval, seed if eval_seed is None else eval_seed)}
    rng = random.Random(seed + 1)
    plans = unique_plans(n, seed + 1, exclude=held_out)
    return [{"messages": demonstration(p, rng, forget_rates, off_task_rate), "metadata": {"memory": p}} for p in plans]


def corpus_texts(n: int, seed: int) -> list[list[dict]]:
    """Conversations for training a tokenizer on this task's text (every reply kind appears)."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        chats.append(demonstration(make_plan(rng), rng, {1: 0.3}, 0.3))
    return chats


def write_dataset(out_dir: str, num_train: int = 2000, num_eval: int = 200, num_sft: int = 2000,
                  seed: int = 0) -> dict[str, str]:
    """``train.jsonl`` / ``eval.jsonl`` (prompt rows) and ``sft.jsonl`` (conversations)."""
    os.makedirs(out_dir, exist_ok=True)
    train, eval_rows = prompt_splits(num_train, num_eval, seed)
    files = {
        "train": [_row_json(r) for r in train],
        "eval": [_row_json(r) for r in eval_rows],
        "sft": sft_conversations(num_sft, seed, num_eval=num_eval),
    }
    paths = {}
    for name, rows in files.items():
        path = os.path.join(out_dir, f"{name}.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(path + ".tmp", path)
        paths[name] = path
    return paths


def _row_json(row: PromptRow) -> dict:
    return {"messages": row.messages, "answer": row.answer, "references": row.references, "metadata": row.metadata}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the memory task's JSONL files.")
    parser.add_argument("out_dir")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--num-sft", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_dataset(args.out_dir, args.num_train, args.num_eval, args.num_sft, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
