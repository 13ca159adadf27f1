"""The built-in support-assistant chat task (``data.task: support``).

A customer asks about an order; the user message carries the order's facts as a short context
("Context: it arrives friday; you ordered a lamp; ..."), then one question. A hidden **gold**
rule stands in for human annotators and rewards three things:

* the correct fact (0.5): the asked value appears and no wrong value does;
* politeness (0.25): a greeting at the start and a thank-you closing, none of it if any rude word;
* concision (0.25): full marks up to :data:`CONCISE_WORDS` words, none at twice that.

Everything a tiny model on a CPU needs to show the chat recipe comes from here:

* held-out prompts (rows with ``messages``, ``answer`` = the asked value, ``references`` = the
  perfect replies, ``metadata`` = the facts and the asked field);
* SFT conversations whose demonstrations are of **mixed quality** (:data:`DEMO_QUALITY`: wrong
  facts, rude or missing greetings, filler), some with a second question, so the SFT policy is
  mediocre on gold and RL has room to improve;
* preference pairs labelled by gold, with settable label noise, for the reward model, each
  tagged with what separates its two replies (:func:`pair_group`), and contrast pairs whose
  replies differ only in the fact (:func:`contrast_pairs`).

The facts are single words copied from the context, which small transformers learn quickly,
and every context clause is the reply's own phrase ("it arrives friday" -> "It arrives
friday."), so the copy is the one an induction head makes.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from typing import Iterator

FIELDS = ("item", "status", "day", "carrier")
VALUES: dict[str, tuple[str, ...]] = {
    "item": ("lamp", "chair", "table", "kettle", "phone", "jacket", "camera", "blender", "mirror", "clock"),
    "status": ("shipped", "packed", "delayed", "returned", "cancelled", "confirmed"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "carrier": ("ups", "dhl", "fedex", "usps", "dpd", "gls"),
}
# (context clause, reply sentence) per field: the reply repeats the clause's words.
CLAUSES: dict[str, tuple[str, str]] = {
    "item": ("you ordered a {}", "You ordered a {}."),
    "status": ("your order is {}", "Your order is {}."),
    "day": ("it arrives {}", "It arrives {}."),
    "carrier": ("it ships with {}", "It ships with {}."),
}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "item": ("What did I order?", "Which item did I buy?"),
    "status": ("What is the status of my order?", "Is my order on its way?"),
    "day": ("When will my order arrive?", "What day does it arrive?"),
    "carrier": ("Which carrier has my order?", "Who is delivering my order?"),
}
GREETINGS = ("Hello!", "Hi there!")
CLOSINGS = ("Thanks for waiting.", "Happy to help.")
RUDE_OPENERS = ("Ugh.", "Whatever.")
RUDE_WORDS = frozenset({"ugh", "whatever", "obviously"})
FILLERS = (
    "Let me tell you about our store.",
    "We sell many other great products.",
    "Our team works very hard every day.",
    "Please read our long policy page too.",
)
CONCISE_WORDS = 10
"""Replies of at most this many words get full concision marks (the perfect reply has 7-9)."""
WEIGHTS = {"fact": 0.5, "polite": 0.25, "concise": 0.25}

_CONTEXT = re.compile(r"Context: (.*?)\.\n", re.S)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class ReplyQuality:
    """Probabilities of each kind of reply the generator writes (each row sums to 1)."""

    fact: tuple[float, float, float]
    """correct fact / a hallucinated value of the asked kind / the answer to another question."""
    opener: tuple[float, float, float]
    """greeting / nothing / a rude opener."""
    closing: float
    """Probability of a thank-you closing."""
    fillers: tuple[float, float, float]
    """zero / one / two filler sentences."""


DEMO_QUALITY = ReplyQuality(fact=(0.6, 0.2, 0.2), opener=(0.55, 0.25, 0.2), closing=0.5, fillers=(0.6, 0.25, 0.15))
"""The SFT demonstrations: what mediocre annotators write (gold mean about 0.6)."""
PAIR_QUALITY = ReplyQuality(fact=(0.5, 0.25, 0.25), opener=(0.4, 0.3, 0.3), closing=0.5, fillers=(0.5, 0.3, 0.2))
"""The candidates compared in preference pairs: every defect common enough to be learned."""


# ---------------------------------------------------------------------------------------------
# Prompts


def _draw_facts(rng: random.Random) -> dict[str, str]:
    return {f: rng.choice(VALUES[f]) for f in FIELDS}


def context_text(facts: dict[str, str], order: list[str]) -> str:
    return "Context: " + "; ".join(CLAUSES[f][0].format(facts[f]) for f in order) + "."


def perfect_replies(facts: dict[str, str], field: str) -> list[str]:
    """The replies gold scores 1.0 that the task uses as references."""
    fact = CLAUSES[field][1].format(facts[field])
    return [f"{g} {fact} {c}" for g, c in zip(GREETINGS, CLOSINGS)]


def _prompt_row(rng: random.Random) -> dict:
    facts = _draw_facts(rng)
    order = list(FIELDS)
    rng.shuffle(order)
    field = rng.choice(FIELDS)
    prompt = f"{context_text(facts, order)}\n{rng.choice(QUESTIONS[field])}"
    return {
        "prompt": prompt,
        "answer": facts[field],
        "references": perfect_replies(facts, field),
        "metadata": {"field": field, "facts": facts},
    }


def iter_rows(seed: int) -> Iterator[dict]:
    """Endless seeded prompt rows ``{"prompt", "answer", "references", "metadata"}``."""
    rng = random.Random(seed)
    while True:
        yield _prompt_row(rng)


def parse_facts(prompt: str) -> dict[str, str]:
    """The facts of a support prompt's context (the inverse of :func:`context_text`)."""
    match = _CONTEXT.search(prompt + "\n")
    if match is None:
        raise ValueError(f"support task: prompt {prompt[:80]!r} has no 'Context: ...' line")
    facts = {}
    for clause in match.group(1).split("; "):
        for field, (pattern, _) in CLAUSES.items():
            head = pattern.format("")
            if clause.startswith(head) and clause[len(head):] in VALUES[field]:
                facts[field] = clause[len(head):]
    if set(facts) != set(FIELDS):
        raise ValueError(f"support task: context {match.group(1)!r} does not name {list(FIELDS)}")
    return facts


# ---------------------------------------------------------------------------------------------
# Gold


def gold_components(facts: dict[str, str], answer: str, reply: str) -> dict[str, float]:
    """The gold rule's three parts, each in [0, 1], and their weighted ``score``.

    ``answer`` is the asked value; any other value of any field (from the context or not)
    counts as a wrong fact, so a reply that hedges with two days is only half right.
    """
    words = _WORD.findall(reply.lower())
    correct = answer in words
    wrong = any(w != answer and any(w in VALUES[f] for f in FIELDS) for w in words)
    fact = (1.0 if not wrong else 0.5) if correct else 0.0
    parts = {"fact": fact, **surface_components(reply)}
    parts["score"] = sum(WEIGHTS[k] * v for k, v in parts.items())
    return parts


def surface_components(reply: str) -> dict[str, float]:
    """The parts of the gold rule that need no fact: ``polite`` and ``concise``, each in [0, 1]."""
    words = _WORD.findall(reply.lower())
    text = reply.strip()
    greeted = text.startswith(GREETINGS)
    thanked = any(c in text for c in CLOSINGS)
    rude = any(w in RUDE_WORDS for w in words)
    polite = 0.0 if rude else 0.5 * greeted + 0.5 * thanked
    concise = min(1.0, max(0.0, 2.0 - len(words) / CONCISE_WORDS))
    return {"polite": polite, "concise": concise}


def fact_blind_accuracy(pairs) -> dict[str, float]:
    """Pairwise accuracy of a scorer that sees only a reply's politeness and concision, blind
    to its fact (ties count half): ``{"all": ..., "<group>": ...}`` over preference pairs whose
    ``chosen`` / ``rejected`` are ``[assistant message]``. A reward model that checks facts
    beats it; one that learned only the surface of a good reply matches it."""
    by_group: dict[str, list[float]] = {}
    for pair in pairs:
        chosen, rejected = (
            sum(WEIGHTS[k] * v for k, v in surface_components(side[-1]["content"]).items())
            for side in (pair.chosen, pair.rejected)
        )
        hit = 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
        by_group.setdefault("all", []).append(hit)
        if pair.group:
            by_group.setdefault(pair.group, []).append(hit)
    return {group: sum(hits) / len(hits) for group, hits in by_group.items()}


def gold_score(prompt: str, completion: str, answer: str | None) -> float:
    """Gold reward in [0, 1] of ``completion`` to a support ``prompt`` (the rule-reward
    signature ``fn(prompt, completion, answer)``; ``answer`` is the asked value)."""
    facts = parse_facts(prompt)
    if answer is None:
        raise ValueError("support task: gold_score needs the row's answer (the asked value)")
    return gold_components(facts, str(answer), completion)["score"]


# ---------------------------------------------------------------------------------------------
# Replies of mixed quality, SFT conversations, preference pairs


def _pick(rng: random.Random, probabilities: tuple[float, ...]) -> int:
    return rng.choices(range(len(probabilities)), weights=probabilities)[0]


def sample_reply(rng: random.Random, facts: dict[str, str], field: str, quality: ReplyQuality) -> str:
    """One reply to a question about ``field``, its defects drawn from ``quality``."""
    kind = _pick(rng, quality.fact)
    if kind == 0:
        fact = CLAUSES[field][1].format(facts[field])
    elif kind == 1:
        wrong = rng.choice([v for v in VALUES[field] if v != facts[field]])
        fact = CLAUSES[field][1].format(wrong)
    else:
        other = rng.choice([f for f in FIELDS if f != field])
        fact = CLAUSES[other][1].format(facts[other])
    parts = []
    opener = _pick(rng, quality.opener)
    if opener == 0:
        parts.append(rng.choice(GREETINGS))
    elif opener == 2:
        parts.append(rng.choice(RUDE_OPENERS))
    parts.append(fact)
    parts += rng.sample(FILLERS, _pick(rng, quality.fillers))
    if rng.random() < quality.closing:
        parts.append(rng.choice(CLOSINGS))
    return " ".join(parts)


def _messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}]


def sft_conversations(rows: list[dict], seed: int, second_turn: float = 0.3) -> list[dict]:
    """One demonstration conversation ``{"messages": [...]}`` per prompt row, replies drawn
    from :data:`DEMO_QUALITY`; a ``second_turn`` fraction asks a follow-up about another field
    and answers it too (two assistant turns)."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        facts, field = row["metadata"]["facts"], row["metadata"]["field"]
        messages = _messages(row) + [{"role": "assistant", "content": sample_reply(rng, facts, field, DEMO_QUALITY)}]
        if rng.random() < second_turn:
            follow = rng.choice([f for f in FIELDS if f != field])
            messages += [
                {"role": "user", "content": rng.choice(QUESTIONS[follow])},
                {"role": "assistant", "content": sample_reply(rng, facts, follow, DEMO_QUALITY)},
            ]
        out.append({"messages": messages})
    return out


def fact_kind(facts: dict[str, str], field: str, reply: str) -> str:
    """Which fact ``reply`` names: ``right`` (the asked value), ``other-question`` (another
    field's value from the context) or ``made-up`` (neither)."""
    words = set(_WORD.findall(reply.lower()))
    if facts[field] in words:
        return "right"
    if any(facts[f] in words for f in FIELDS if f != field):
        return "other-question"
    return "made-up"


def pair_group(facts: dict[str, str], field: str, a: str, b: str) -> str:
    """What separates replies ``a`` and ``b`` (either order): ``same-fact`` when both name the
    same kind of fact (greeting, closing and length decide), else the two kinds, e.g.
    ``right|made-up``."""
    order = ("right", "other-question", "made-up")
    kinds = sorted({fact_kind(facts, field, a), fact_kind(facts, field, b)}, key=order.index)
    return "same-fact" if len(kinds) == 1 else "|".join(kinds)


def _check_noise(label_noise: float) -> None:
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"rm.label_noise={label_noise!r} must be in [0, 0.5)")


def _pair(rng: random.Random, row: dict, chosen: str, rejected: str, label_noise: float) -> dict:
    """A pair of TRL's explicit-prompt form, swapped with probability ``label_noise``."""
    if rng.random() < label_noise:
        chosen, rejected = rejected, chosen
    facts, field = row["metadata"]["facts"], row["metadata"]["field"]
    return {
        "prompt": _messages(row),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "group": pair_group(facts, field, chosen, rejected),
    }


def preference_pairs(rows: list[dict], seed: int, label_noise: float = 0.0, min_gap: float = 0.05) -> list[dict]:
    """One pair per prompt row in TRL's explicit-prompt form ``{"prompt": messages, "chosen":
    [assistant], "rejected": [assistant], "group": pair_group(...)}``: two replies drawn from :data:`PAIR_QUALITY` whose
    gold scores differ by at least ``min_gap``, the better one chosen; a ``label_noise``
    fraction of pairs is swapped, as careless annotators would."""
    _check_noise(label_noise)
    rng = random.Random(seed)
    out = []
    for row in rows:
        facts, field, answer = row["metadata"]["facts"], row["metadata"]["field"], row["answer"]
        for _ in range(100):
            a, b = (sample_reply(rng, facts, field, PAIR_QUALITY) for _ in range(2))
            ga, gb = (gold_components(facts, answer, r)["score"] for r in (a, b))
            if abs(ga - gb) >= min_gap:
                break
        else:  # pragma: no cover - the candidate space makes 100 ties vanishingly unlikely
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        out.append(_pair(rng, row, chosen, rejected, label_noise))
    return out


def contrast_pairs(rows: list[dict], seed: int, label_noise: float = 0.0) -> list[dict]:
    """One pair per prompt row whose two replies differ **only in the fact**: a reply with the
    right one (its greeting, fillers and closing drawn from :data:`PAIR_QUALITY`) against the
    same reply naming a made-up value of the asked field (three rows in four) or another field's
    value from the context (every fourth row); the right one chosen, a ``label_noise`` fraction
    swapped.

    In natural pairs the fact comes mixed with politeness and length, which a small reward
    model learns first; these pairs, like the minimal edits annotators are sometimes asked to
    compare, leave nothing but the fact to learn from. Made-up values get most of them: telling
    one apart means comparing the reply with the context, a harder check than comparing it
    with the question, which is all another field's value needs."""
    _check_noise(label_noise)
    rng = random.Random(seed)
    right_only = dataclasses.replace(PAIR_QUALITY, fact=(1.0, 0.0, 0.0))
    out = []
    for i, row in enumerate(rows):
        facts, field = row["metadata"]["facts"], row["metadata"]["field"]
        right = sample_reply(rng, facts, field, right_only)
        if i % 4 != 3:
            wrong = CLAUSES[field][1].format(rng.choice([v for v in VALUES[field] if v != facts[field]]))
        else:
            other = rng.choice([f for f in FIELDS if f != field])
            wrong = CLAUSES[other][1].format(facts[other])
        out.append(_pair(rng, row, right, right.replace(CLAUSES[field][1].format(facts[field]), wrong), label_noise))
    return out


def corpus_chats(n: int, seed: int) -> list[list[dict]]:
    """Conversations covering every phrase of the task (for the tokenizer of ``init-model``)."""
    rows = [row for row, _ in zip(iter_rows(seed), range(n))]
    chats = [c["messages"] for c in sft_conversations(rows, seed, second_turn=0.5)]
    for row, chat in zip(rows, chats):
        chat.append({"role": "assistant", "content": row["references"][0]})
    return chats
