"""``rayppo feedback stats``: counts per rater, agreement between raters, win rates.

* **Counts**: ratings per rater and task kind, chat replies voted on, median seconds per rating.
* **Agreement**: Cohen's kappa for every pair of raters on the items both rated (first round
  only), and their mean over pairs (Light's kappa). Comparisons use the four answers
  (a, b, tie, both bad) unweighted; 1-5 ratings use quadratic weights, since 4 vs 5 is a
  smaller disagreement than 1 vs 5. Items of an agreement set rated more than once by one
  rater also give that rater's self-agreement (round 0 against round 1).
* **Win rate** of model A over model B on the compared items that pair them: wins count 1,
  ties 1/2, both bad are left out (and reported); the 95% interval is Wilson's score interval
  on the ratings, which treats them as independent (with several raters per item they are
  not quite, so the interval is a little narrow).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from itertools import combinations
from typing import Iterable, Optional

from sqlalchemy import select

from pipeline.feedback.export import resolve_tasks
from pipeline.feedback.storage import Assignment, ChatMessage, ChatSession, Database, Item, Rater, Rating, Task
from pipeline.infra.tracking import format_table

Z95 = 1.959964


def cohen_kappa(first: list, second: list, weights: Optional[str] = None) -> float:
    """Cohen's kappa of two raters' labels of the same items (``weights="quadratic"`` for
    ordinal numbers). NaN when agreement by chance is already certain (one label only)."""
    if len(first) != len(second):
        raise ValueError(f"cohen_kappa: {len(first)} labels against {len(second)}")
    if not first:
        return float("nan")
    labels = sorted(set(first) | set(second))
    index = {label: i for i, label in enumerate(labels)}
    k, n = len(labels), len(first)
    observed = [[0.0] * k for _ in range(k)]
    for x, y in zip(first, second):
        observed[index[x]][index[y]] += 1 / n
    rows = [sum(observed[i]) for i in range(k)]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    if weights == "quadratic":
        span = max(labels) - min(labels) or 1
        weight = [[((labels[i] - labels[j]) / span) ** 2 for j in range(k)] for i in range(k)]
    elif weights is None:
        weight = [[0.0 if i == j else 1.0 for j in range(k)] for i in range(k)]
    else:
        raise ValueError(f"cohen_kappa: weights must be None or 'quadratic', got {weights!r}")
    disagreement = sum(weight[i][j] * observed[i][j] for i in range(k) for j in range(k))
    chance = sum(weight[i][j] * rows[i] * cols[j] for i in range(k) for j in range(k))
    return float("nan") if chance == 0 else 1.0 - disagreement / chance


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``successes`` may be fractional: ties count 1/2)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def rater_counts(db: Database) -> list[dict]:
    with db.read() as s:
        raters = list(s.scalars(select(Rater).order_by(Rater.id)))
        kinds = dict(s.execute(select(Task.id, Task.kind)).all())
        ratings = list(s.scalars(select(Rating)))
        votes = Counter(s.scalars(select(ChatSession.rater_id).join(ChatMessage, ChatMessage.session_id == ChatSession.id)
                                  .where(ChatMessage.vote.is_not(None))))
    per = defaultdict(list)
    for rating in ratings:
        per[rating.rater_id].append(rating)
    out = []
    for rater in raters:
        mine = per[rater.id]
        out.append({
            "rater": rater.name,
            "compare": sum(kinds[r.task_id] == "compare" for r in mine),
            "rate": sum(kinds[r.task_id] == "rate" for r in mine),
            "chat_votes": votes.get(rater.id, 0),
            "median_seconds": statistics.median(r.seconds for r in mine) if mine else float("nan"),
        })
    return out


def _labels(s, task: Task) -> dict[tuple[int, int], dict[int, object]]:
    """(rater, round) -> {item: label} of a task."""
    out: dict[tuple[int, int], dict[int, object]] = defaultdict(dict)
    query = (select(Rating, Assignment.round).join(Assignment, Assignment.id == Rating.assignment_id)
             .where(Rating.task_id == task.id))
    for rating, round_ in s.execute(query):
        out[(rating.rater_id, round_)][rating.item_id] = rating.preference if task.kind == "compare" else rating.score
    return out


def agreement(db: Database, task: Task) -> dict:
    weights = "quadratic" if task.kind == "rate" else None
    with db.read() as s:
        labels = _labels(s, task)
        names = dict(s.execute(select(Rater.id, Rater.name)).all())
    first = {rater: items for (rater, round_), items in labels.items() if round_ == 0}
    pairs = []
    for a, b in combinations(sorted(first), 2):
        shared = sorted(set(first[a]) & set(first[b]))
        if shared:
            kappa = cohen_kappa([first[a][i] for i in shared], [first[b][i] for i in shared], weights)
            pairs.append({"raters": [names[a], names[b]], "items": len(shared), "kappa": kappa})
    finite = [p["kappa"] for p in pairs if math.isfinite(p["kappa"])]
    x, y = [], []
    for (rater, round_), items in labels.items():
        if round_ == 1:
            for item, label in items.items():
                if item in first.get(rater, {}):
                    x.append(first[rater][item])
                    y.append(label)
    return {
        "weights": weights or "none",
        "pairs": pairs,
        "mean_kappa": statistics.fmean(finite) if finite else float("nan"),
        "self": {"items": len(x), "agree": (sum(a == b for a, b in zip(x, y)) / len(x)) if x else float("nan"),
                 "kappa": cohen_kappa(x, y, weights) if x else float("nan")},
    }


def win_rates(db: Database, task: Task) -> list[dict]:
    """Per pair of models compared in ``task`` (oriented as first seen): wins, losses, ties."""
    tallies: dict[tuple[str, str], Counter] = {}
    with db.read() as s:
        query = (
            select(Rating.preference, Item.model_a, Item.model_b)
            .join(Item, Item.id == Rating.item_id)
            .join(Assignment, Assignment.id == Rating.assignment_id)
            .where(Rating.task_id == task.id, Assignment.round == 0)  # a repeat is not a new opinion
            .order_by(Rating.id)
        )
        for preference, model_a, model_b in s.execute(query):
            if model_a is None or model_b is None or model_a == model_b:
                continue
            if (model_b, model_a) in tallies:  # seen the other way round: flip to that orientation
                model_a, model_b = model_b, model_a
                preference = {"a": "b", "b": "a"}.get(preference, preference)
            tallies.setdefault((model_a, model_b), Counter())[preference] += 1
    out = []
    for (model_a, model_b), tally in tallies.items():
        n = tally["a"] + tally["b"] + tally["tie"]
        score = tally["a"] + tally["tie"] / 2
        low, high = wilson_interval(score, n)
        out.append({"model_a": model_a, "model_b": model_b, "wins": tally["a"], "losses": tally["b"],
                    "ties": tally["tie"], "both_bad": tally["both_bad"], "n": n,
                    "win_rate": score / n if n else float("nan"), "low": low, "high": high})
    return out


def report(db: Database, task_names: Iterable[str] = ()) -> dict:
    tasks = resolve_tasks(db, task_names)
    per_task = []
    with db.read() as s:
        counts = {t.id: s.scalar(select(Rating.id).where(Rating.task_id == t.id).limit(1)) for t in tasks}
    for task in tasks:
        entry = {"task": task.name, "id": task.id, "kind": task.kind}
        if task.kind != "chat" and counts[task.id] is not None:
            entry["agreement"] = agreement(db, task)
            if task.kind == "compare":
                entry["win_rates"] = win_rates(db, task)
        per_task.append(entry)
    return {"raters": rater_counts(db), "tasks": per_task}


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_report(data: dict) -> str:
    parts = [format_table([(r["rater"], r["compare"], r["rate"], r["chat_votes"], _num(r["median_seconds"], 1))
                           for r in data["raters"]], ("rater", "compared", "rated", "chat votes", "median s"))]
    for task in data["tasks"]:
        parts.append(f"\ntask {task['id']} {task['task']} ({task['kind']})")
        if "agreement" not in task:
            parts.append("  no ratings yet" if task["kind"] != "chat" else "  live chat: see the chat votes above")
            continue
        agree = task["agreement"]
        rows = [(" & ".join(p["raters"]), p["items"], _num(p["kappa"])) for p in agree["pairs"]]
        if rows:
            parts.append(format_table(rows, ("raters", "shared items", f"kappa ({agree['weights']} weights)")))
            parts.append(f"mean pairwise kappa: {_num(agree['mean_kappa'])}")
        else:
            parts.append("no item was rated by two raters: no agreement to measure")
        if agree["self"]["items"]:
            parts.append(f"self-agreement on repeated items: {_num(agree['self']['agree'])} "
                         f"(kappa {_num(agree['self']['kappa'])}, {agree['self']['items']} items)")
        for w in task.get("win_rates", []):
            parts.append(f"win rate of {w['model_a']} over {w['model_b']}: {_num(w['win_rate'])} "
                         f"[95% {_num(w['low'])}, {_num(w['high'])}] over {w['n']} ratings "
                         f"({w['wins']} wins, {w['losses']} losses, {w['ties']} ties; {w['both_bad']} both bad)")
    return "\n".join(parts)
