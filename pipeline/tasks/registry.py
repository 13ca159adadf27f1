"""The built-in tasks (``data.task``), by name. Each is one module of this package with its rows,
verifier and optional hooks (:class:`pipeline.tasks.base.Task`); adding a task is that module
and one line here.

Prompts are kept short on purpose: the models trained on them are tiny and the tokenizer is
trained on exactly this text.
"""

from __future__ import annotations

from pipeline.data import PromptRow, load_prompt_files, task_prompt_rows
from pipeline.tasks import arithmetic, countdown, memory, support
from pipeline.tasks.base import Task, split_rows as _split_task_rows

REGISTRY: dict[str, Task] = {t.TASK.name: t.TASK for t in (arithmetic, countdown, support, memory)}
TASKS = tuple(REGISTRY)


def get(task: str) -> Task:
    if task not in REGISTRY:
        raise ValueError(f"data.task={task!r} is not a built-in task; choose one of {list(TASKS)}")
    return REGISTRY[task]


def generate_rows(
    task: str, n: int, seed: int, min_digits: int = 1, max_digits: int = 2
) -> list[dict]:
    """``n`` rows ``{"prompt", "answer"}`` of ``task``, the same for the same arguments.

    Prompts may repeat; use :func:`split_rows` for disjoint, duplicate-free splits.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"generate_rows: n={n!r} must be a non-negative integer")
    rows = get(task).rows(seed, min_digits, max_digits)
    return [next(rows) for _ in range(n)]


def split_rows(
    task: str, num_train: int, num_eval: int, seed: int, min_digits: int = 1, max_digits: int = 2
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and eval rows of ``task`` with no prompt appearing twice anywhere (the eval
    rows are drawn first, so the held-out set does not change when ``num_train`` does)."""
    return _split_task_rows(get(task), num_train, num_eval, seed, min_digits, max_digits)


def final_answer(completion: str) -> str:
    """``completion`` without a leading reasoning block: reasoning models (Qwen3's template
    opens every reply with ``<think>...</think>``, empty when not thinking) answer after it."""
    stripped = completion.lstrip()
    if stripped.startswith("<think>") and "</think>" in stripped:
        return stripped.split("</think>", 1)[1]
    return completion


def verify(task: str, completion: str, answer: str, prompt: str) -> float:
    """1.0 if ``completion`` solves ``prompt`` of ``task``, else 0.0 (``support``: the gold
    score in [0, 1]). A leading reasoning block is not part of the answer."""
    return get(task).verify(final_answer(completion), answer, prompt)


def prompt_splits(data_cfg) -> tuple[list[PromptRow], list[PromptRow]]:
    """Train and eval prompts of a :class:`pipeline.config.DataConfig`: the task's, or the files'."""
    if data_cfg.task is None:
        return load_prompt_files(data_cfg)
    task = get(data_cfg.task)
    if task.prompt_splits is not None:
        return task.prompt_splits(data_cfg)
    train, eval_ = split_rows(
        data_cfg.task, data_cfg.num_train, data_cfg.num_eval, data_cfg.seed, data_cfg.min_digits, data_cfg.max_digits
    )
    return (
        task_prompt_rows(train, data_cfg.task, split="train"),
        task_prompt_rows(eval_, data_cfg.task, split="eval"),
    )
