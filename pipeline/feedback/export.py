"""``rayppo feedback export``: ratings out of the database, as files training reads.

* ``pairs``: preference pairs in the schema ``rayppo rm`` reads (TRL's)::

      {"prompt": [messages], "chosen": [{"role": "assistant", "content": ...}],
       "rejected": [{"role": "assistant", "content": ...}]}

  One row per compared item that has a majority: the raters' first-round votes for ``a`` and
  ``b`` are counted and the reply with more votes is chosen. Items whose votes are even, or
  only ties / both bad, have no pair (counted in the summary).
* ``rewards``: a reward file, one row per rated reply::

      {"messages": [...], "completion": "...", "reward": 0.75, "score": 4.0, "ratings": 2,
       "source": "task 3 item 17"}

  ``reward`` is in [0, 1]: the mean 1-5 score mapped linearly (1 -> 0, 5 -> 1), or a live-chat
  thumb (up 1, down 0; ``score`` is then +1 / -1).

``.jsonl`` (default), ``.json`` and ``.parquet`` are written, each atomically (``X.tmp``, renamed).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Iterable, Optional

from sqlalchemy import select

from pipeline.feedback.storage import Assignment, ChatMessage, ChatSession, Database, Item, Rating, Task

KINDS = ("pairs", "rewards")


def resolve_tasks(db: Database, names: Iterable[str] = ()) -> list[Task]:
    """Tasks by name or id (all tasks when ``names`` is empty); ``ValueError`` for an unknown one."""
    with db.read() as s:
        tasks = list(s.scalars(select(Task).order_by(Task.id)))
    names = list(names)
    if not names:
        return tasks
    by_key = {t.name: t for t in tasks} | {str(t.id): t for t in tasks}
    missing = [n for n in names if n not in by_key]
    if missing:
        known = ", ".join(f"{t.id}:{t.name}" for t in tasks) or "none"
        raise ValueError(f"--task {missing[0]!r}: no such task (tasks: {known})")
    return [by_key[n] for n in names]


def _first_round_ratings(s, task_id: int) -> list[Rating]:
    return list(s.scalars(
        select(Rating).join(Assignment, Assignment.id == Rating.assignment_id)
        .where(Rating.task_id == task_id, Assignment.round == 0).order_by(Rating.id)
    ))


def preference_pairs(db: Database, tasks: list[Task]) -> tuple[list[dict], Counter]:
    rows, counts = [], Counter()
    with db.read() as s:
        for task in (t for t in tasks if t.kind == "compare"):
            votes: dict[int, Counter] = defaultdict(Counter)
            for rating in _first_round_ratings(s, task.id):
                votes[rating.item_id][rating.preference] += 1
            for item_id, tally in sorted(votes.items()):
                if tally["a"] == tally["b"]:
                    counts["no majority"] += 1
                    continue
                item = s.get(Item, item_id)
                chosen, rejected = (item.reply_a, item.reply_b) if tally["a"] > tally["b"] else (item.reply_b, item.reply_a)
                rows.append({
                    "prompt": item.prompt,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                })
                counts["pairs"] += 1
    return rows, counts


def reward_rows(db: Database, tasks: list[Task]) -> tuple[list[dict], Counter]:
    rows, counts = [], Counter()
    with db.read() as s:
        for task in tasks:
            if task.kind == "rate":
                scores: dict[int, list[int]] = defaultdict(list)
                for rating in _first_round_ratings(s, task.id):
                    scores[rating.item_id].append(rating.score)
                for item_id, values in sorted(scores.items()):
                    item = s.get(Item, item_id)
                    mean = sum(values) / len(values)
                    rows.append({"messages": item.prompt, "completion": item.reply_a, "reward": (mean - 1) / 4,
                                 "score": mean, "ratings": len(values), "source": f"task {task.id} item {item.id}"})
                    counts["rated replies"] += 1
            elif task.kind == "chat":
                for chat in s.scalars(select(ChatSession).where(ChatSession.task_id == task.id).order_by(ChatSession.id)):
                    messages = list(s.scalars(select(ChatMessage).where(ChatMessage.session_id == chat.id)
                                              .order_by(ChatMessage.position)))
                    system = (task.settings or {}).get("system")
                    head = [{"role": "system", "content": system}] if system else []
                    for i, message in enumerate(messages):
                        if message.role != "assistant" or message.vote is None:
                            continue
                        before = head + [{"role": m.role, "content": m.content} for m in messages[:i]]
                        rows.append({"messages": before, "completion": message.content,
                                     "reward": 1.0 if message.vote > 0 else 0.0, "score": float(message.vote),
                                     "ratings": 1, "source": f"task {task.id} chat {chat.id} message {message.id}"})
                        counts["voted chat replies"] += 1
    return rows, counts


def write_rows(rows: list[dict], path: str) -> str:
    """``rows`` as ``.jsonl``, ``.json`` or ``.parquet`` (by the extension), written atomically."""
    if not path.endswith((".jsonl", ".json", ".parquet")):
        raise ValueError(f"--out {path!r}: use a .jsonl, .json or .parquet file name")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            if path.endswith(".json"):
                json.dump(rows, f, ensure_ascii=False)
            else:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)
    return path


def export(db: Database, kind: str, out: str, task_names: Optional[Iterable[str]] = None) -> tuple[str, Counter]:
    if kind not in KINDS:
        raise ValueError(f"export kind must be one of {', '.join(KINDS)}; got {kind!r}")
    tasks = resolve_tasks(db, task_names or ())
    rows, counts = (preference_pairs if kind == "pairs" else reward_rows)(db, tasks)
    if not rows:
        raise ValueError(f"nothing to export as {kind}: no {'compared items with a majority' if kind == 'pairs' else 'rated replies'} "
                         f"in {', '.join(t.name for t in tasks) or 'the database'}")
    return write_rows(rows, out), counts
