"""``rayppo feedback add-tasks``: where the items raters judge come from.

* **Prompts and models**: a prompt file (any format :func:`pipeline.data.load_rows` reads) and
  one or two models. The replies are sampled by the rollout engines (:mod:`rollout_workers`,
  Ray actors, vLLM by default). With one model a comparison pairs two of its samples; with two
  it pairs one sample of each (``model_a`` is the first model, whatever order raters see).
* **A training run's samples**: the ``samples.jsonl`` a run writes with ``logging.sample_every``
  (:mod:`pipeline.infra.sample_log`); a comparison pairs two samples of one prompt at one step.
* **Live chat**: a chat task needs no items, only the model it serves.

An agreement set (``agreement_items``) is a seeded choice of items that every rater gets,
``agreement_repeats`` times each: the overlap Cohen's kappa is measured on, and, with repeats,
how consistent each rater is with themself.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pipeline import data
from pipeline.config import RayppoConfig
from pipeline.data import load_rows
from pipeline.feedback.storage import TASK_KINDS, Database, Item, Task
from pipeline.infra.model_path import resolve_model_path
from rollout_workers.types import Sampling


@dataclass
class NewItem:
    prompt: list[dict]
    reply_a: str
    reply_b: Optional[str] = None
    model_a: Optional[str] = None
    model_b: Optional[str] = None
    source: str = ""
    info: dict = field(default_factory=dict)


def create_task(db: Database, name: str, kind: str, *, instructions: str = "", raters_per_item: int = 1,
                chat_model: Optional[str] = None, settings: Optional[dict] = None, append: bool = False) -> int:
    """The id of a new task (or, with ``append``, of the existing task of that name and kind)."""
    if kind not in TASK_KINDS:
        raise ValueError(f"--kind must be one of {', '.join(TASK_KINDS)}; got {kind!r}")
    if not name or not name.strip():
        raise ValueError("--name must be a non-empty task name")
    if raters_per_item < 1:
        raise ValueError(f"--raters-per-item must be >= 1, got {raters_per_item}")
    if kind == "chat" and not chat_model:
        raise ValueError("a chat task needs --model (the model raters chat with)")
    with db.write() as s:
        existing = s.scalar(select(Task).where(Task.name == name))
        if existing is not None:
            if not append:
                raise ValueError(f"a task named {name!r} exists (id {existing.id}); --append adds items to it")
            if existing.kind != kind:
                raise ValueError(f"task {name!r} is a {existing.kind} task, not {kind}")
            return existing.id
        task = Task(name=name, kind=kind, instructions=instructions, raters_per_item=raters_per_item,
                    chat_model=chat_model, settings=settings or {})
        s.add(task)
        try:
            s.flush()
        except IntegrityError:
            raise ValueError(f"a task named {name!r} was created at the same time; run again with --append") from None
        return task.id


def add_items(db: Database, task_id: int, items: list[NewItem], *, agreement_items: int = 0,
              agreement_repeats: int = 1, seed: int = 0) -> int:
    """Store ``items`` in the task; returns how many. The agreement set is drawn with ``seed``."""
    if agreement_items < 0 or agreement_repeats < 1:
        raise ValueError("--agreement-items must be >= 0 and --agreement-repeats >= 1")
    if agreement_items > len(items):
        raise ValueError(f"--agreement-items={agreement_items} but only {len(items)} items are being added")
    agreement = set(random.Random(seed).sample(range(len(items)), agreement_items))
    with db.write() as s:
        task = s.get(Task, task_id)
        if task.kind == "compare" and any(item.reply_b is None for item in items):
            raise ValueError(f"task {task.name!r} compares two replies: every item needs reply_b")
        for index, item in enumerate(items):
            shared = index in agreement
            s.add(Item(
                task_id=task_id, prompt=item.prompt, reply_a=item.reply_a,
                reply_b=item.reply_b if task.kind == "compare" else None,
                model_a=item.model_a, model_b=item.model_b, source=item.source, info=item.info,
                max_raters=None if shared else task.raters_per_item,
                repeats=agreement_repeats if shared else 1,
            ))
    return len(items)


# ------------------------------------------------------------------ from a run's samples


def _samples_path(path: str) -> str:
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "samples.jsonl"), os.path.join(path, "logs", "samples.jsonl")):
            if os.path.isfile(candidate):
                return candidate
        raise ValueError(f"{path}: no samples.jsonl here or in {path}/logs (train with logging.sample_every > 0)")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such samples file")
    return path


def read_samples(path: str) -> list[dict]:
    """Rows of a run's ``samples.jsonl``, checked (file and line named on a bad row)."""
    path = _samples_path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number}: invalid JSON ({exc})") from None
            for key, kind in (("step", int), ("prompt", list), ("completion", str), ("group", int)):
                if not isinstance(row.get(key), kind):
                    raise ValueError(f"{path}: line {number}: field {key!r} must be {kind.__name__}, got {row.get(key)!r:.60}")
            row["_where"] = f"{path}:line {number}"
            rows.append(row)
    return rows


def items_from_samples(path: str, kind: str, label: str = "run", steps: Optional[set[int]] = None) -> list[NewItem]:
    """Comparison items pair two different samples of one prompt at one step; rating items are
    one sample each."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in read_samples(path):
        if steps is None or row["step"] in steps:
            groups.setdefault((row["step"], row["group"]), []).append(row)
    items = []
    for (step, group), rows in sorted(groups.items()):
        model = f"{label}@step{step}"
        if kind == "rate":
            items += [NewItem(r["prompt"], r["completion"], model_a=model, source=r["_where"],
                              info={"reward": r.get("reward")}) for r in rows]
            continue
        distinct = list({r["completion"]: r for r in rows}.values())
        for first, second in zip(distinct[0::2], distinct[1::2]):
            items.append(NewItem(first["prompt"], first["completion"], second["completion"], model, model,
                                 source=f"{first['_where']} + line of group {group}",
                                 info={"reward_a": first.get("reward"), "reward_b": second.get("reward")}))
    return items


# ---------------------------------------------------------- from prompts, sampled by engines


@dataclass
class SamplingPlan:
    engine: str = "vllm"
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0


def parse_model(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (the name is then the path as given)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = spec, spec
    return name, resolve_model_path(path)


def sample_replies(rows, model_path: str, n: int, plan: SamplingPlan) -> list[list[str]]:
    """``n`` replies per row from one model, generated by a rollout engine actor."""
    from transformers import AutoTokenizer

    from pipeline.controller.ray_setup import init_ray
    from rollout_workers.group import RolloutGroup

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt_ids = data.encode_prompts(tokenizer, rows, max_prompt_tokens=1_000_000)
    cfg = RayppoConfig()
    cfg.seed = plan.seed
    cfg.rollout.engine = plan.engine
    cfg.rollout.num_workers = 1
    cfg.rollout.max_tokens = plan.max_tokens
    cfg.data.max_prompt_tokens = max(len(ids) for ids in prompt_ids)
    cfg.learner.num_ranks = 1
    init_ray(cfg)
    group = RolloutGroup(cfg, model_path)
    try:
        batch = group.generate(prompt_ids, Sampling(n=n, temperature=plan.temperature, top_p=plan.top_p,
                                                    max_tokens=plan.max_tokens), step=0)
    finally:
        group.shutdown()
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    replies: list[list[str]] = [[] for _ in rows]
    for index, text in zip(batch.prompt_index, texts):
        replies[index].append(text)
    return replies


def items_from_models(prompts: str, models: list[str], kind: str, plan: SamplingPlan, *, samples: int = 1,
                      limit: Optional[int] = None) -> list[NewItem]:
    """Items from a prompt file and one or two models (``NAME=PATH`` or ``PATH``)."""
    if not 1 <= len(models) <= 2:
        raise ValueError(f"--model: give one or two models, got {len(models)}")
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    named = [parse_model(spec) for spec in models]  # every path checked before any engine starts
    rows = load_rows(prompts)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError(f"{prompts}: no prompt rows")
    if kind == "compare" and len(named) == 1:
        (name, path), = named
        replies = sample_replies(rows, path, 2 * samples, plan)
        return [NewItem(row.messages, r[2 * k], r[2 * k + 1], name, name, row.source)
                for row, r in zip(rows, replies) for k in range(samples)]
    per_model = [(name, sample_replies(rows, path, samples, plan)) for name, path in named]
    if kind == "compare":
        (name_a, replies_a), (name_b, replies_b) = per_model
        return [NewItem(row.messages, a[k], b[k], name_a, name_b, row.source)
                for row, a, b in zip(rows, replies_a, replies_b) for k in range(samples)]
    return [NewItem(row.messages, reply, model_a=name, source=row.source)
            for name, replies in per_model for row, texts in zip(rows, replies) for reply in texts]
