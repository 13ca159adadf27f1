"""Reward functions: resolving ``reward.function`` and scoring completions without crashing a step.

A user's reward function is resolved when the run starts, so a typo in the import path fails in
seconds rather than after the models are loaded. At scoring time one misbehaving sample must not
take the whole step down: it becomes NaN and is counted, and the caller decides what to do.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Callable, Optional

import numpy as np

from pipeline import tasks

logger = logging.getLogger(__name__)

RewardFn = Callable[[str, str, Optional[str]], float]


def _builtin(task: str) -> RewardFn:
    def builtin_verifier(prompt: str, completion: str, answer: str | None) -> float:
        return tasks.verify(task, completion, answer, prompt)

    builtin_verifier.__qualname__ = f"builtin_verifier[{task}]"
    return builtin_verifier


def resolve_reward_fn(function: str, task: str | None) -> RewardFn:
    """The callable ``fn(prompt, completion, answer) -> float`` that ``reward.function`` names."""
    if function == "builtin":
        if task is None:
            raise ValueError(
                "reward.function='builtin' needs data.task (a built-in task such as "
                f"{tasks.TASKS[0]!r}); with prompt files set reward.function to "
                "'package.module:function'"
            )
        if task not in tasks.TASKS:
            raise ValueError(
                f"data.task={task!r} is not a built-in task; choose one of {list(tasks.TASKS)}"
            )
        return _builtin(task)

    if not isinstance(function, str) or function.count(":") != 1:
        raise ValueError(
            f"reward.function={function!r} must be 'builtin' or an import path "
            "'package.module:function'"
        )
    module_name, attr_path = function.split(":")
    if not module_name.strip() or not attr_path.strip():
        raise ValueError(
            f"reward.function={function!r} must be 'builtin' or an import path "
            "'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"reward.function={function!r}: cannot import module {module_name!r} ({e})"
        ) from e
    except Exception as e:
        raise ValueError(
            f"reward.function={function!r}: importing module {module_name!r} failed "
            f"({type(e).__name__}: {e})"
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"reward.function={function!r}: module {module_name!r} has no attribute "
                f"{attr_path!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"reward.function={function!r}: {module_name}.{attr_path} is not callable "
            f"(got {type(obj).__name__})"
        )
    return obj


def _qualified_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}" if module else name


def _as_score(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not one."""
    if isinstance(value, (str, bytes)) or not hasattr(type(value), "__float__"):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def score_completions(
    fn: RewardFn,
    prompts: list[str],
    completions: list[str],
    answers: list[str | None],
) -> tuple[np.ndarray, int]:
    """Scores (float64) of each completion, NaN where ``fn`` failed, and the number of NaNs."""
    if not len(prompts) == len(completions) == len(answers):
        raise ValueError(
            f"rewards.score_completions: got {len(prompts)} prompts, {len(completions)} "
            f"completions and {len(answers)} answers; they must be the same length"
        )
    scores = np.full(len(completions), np.nan, dtype=np.float64)
    failed = 0
    first_problem: str | None = None
    for i, (prompt, completion, answer) in enumerate(zip(prompts, completions, answers)):
        try:
            value = fn(prompt, completion, answer)
        except Exception as e:  # a user's reward function may raise anything
            failed += 1
            if first_problem is None:
                first_problem = f"sample {i} raised {type(e).__name__}: {e}"
            continue
        score = _as_score(value)
        if score is None:
            failed += 1
            if first_problem is None:
                first_problem = f"sample {i} returned {value!r} ({type(value).__name__}), not a finite number"
            continue
        scores[i] = score
    if failed:
        logger.warning(
            "reward function %s could not score %d of %d samples (scored as NaN); first: %s",
            _qualified_name(fn),
            failed,
            len(completions),
            first_problem,
        )
    return scores, failed
