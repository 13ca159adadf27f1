"""Rule rewards: the built-in task verifiers and user functions named ``package.module:function``.

A user's function is resolved when the run starts, so a typo in the import path fails in
seconds rather than after the models are loaded. At scoring time one misbehaving sample must not
take the whole step down: it becomes NaN and is counted, and the caller decides what to do.

A function is called as ``fn(prompt, completion, answer)``; one that also names any of
``messages``, ``references``, ``metadata`` or ``tokenizer`` as parameters (or takes
``**kwargs``) receives them as keywords too, so a chat rule can read the whole conversation.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Callable, Optional

import numpy as np

from pipeline import tasks
from pipeline.rewards.base import LocalSource, ResultBuilder, ScoreRequest, SourceResult, as_score

logger = logging.getLogger("pipeline.rewards")

RewardFn = Callable[[str, str, Optional[str]], float]

# Keywords a rule function may ask for, beyond (prompt, completion, answer).
EXTRA_ARGUMENTS = ("messages", "references", "metadata", "tokenizer")


def _builtin(task: str) -> RewardFn:
    def builtin_verifier(prompt: str, completion: str, answer: str | None) -> float:
        return tasks.verify(task, completion, answer, prompt)

    builtin_verifier.__qualname__ = f"builtin_verifier[{task}]"
    return builtin_verifier


def resolve_reward_fn(function: str, task: str | None, field: str = "reward.function") -> RewardFn:
    """The callable ``fn(prompt, completion, answer) -> float`` that ``function`` names.
    ``field`` is the config field named in errors."""
    if function == "builtin":
        if task is None:
            raise ValueError(
                f"{field}='builtin' needs data.task (a built-in task such as "
                f"{tasks.TASKS[0]!r}); with prompt files set {field} to "
                "'package.module:function'"
            )
        if task not in tasks.TASKS:
            raise ValueError(
                f"data.task={task!r} is not a built-in task; choose one of {list(tasks.TASKS)}"
            )
        return _builtin(task)

    usage = f"{field}={function!r} must be 'builtin' or an import path 'package.module:function'"
    if not isinstance(function, str) or function.count(":") != 1:
        raise ValueError(usage)
    module_name, attr_path = function.split(":")
    if not module_name.strip() or not attr_path.strip():
        raise ValueError(usage)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{field}={function!r}: cannot import module {module_name!r} ({e})") from e
    except Exception as e:
        raise ValueError(
            f"{field}={function!r}: importing module {module_name!r} failed "
            f"({type(e).__name__}: {e})"
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{field}={function!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"{field}={function!r}: {module_name}.{attr_path} is not callable (got {type(obj).__name__})"
        )
    return obj


def _qualified_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}" if module else name


def extra_arguments(fn: Callable) -> tuple[str, ...]:
    """Which of :data:`EXTRA_ARGUMENTS` ``fn`` accepts as keywords."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return EXTRA_ARGUMENTS
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return tuple(a for a in EXTRA_ARGUMENTS if a in names)


def _score_with(fn: Callable, request: ScoreRequest, extras: tuple[str, ...], tokenizer=None) -> ResultBuilder:
    out = ResultBuilder(len(request))
    for i, (prompt, completion, answer) in enumerate(zip(request.prompts, request.completions, request.answers)):
        available = {
            "messages": request.messages[i],
            "references": request.references[i],
            "metadata": request.metadata[i],
            "tokenizer": tokenizer,
        }
        try:
            value = fn(prompt, completion, answer, **{k: available[k] for k in extras})
        except Exception as e:  # a user's reward function may raise anything
            out.fail(i, "raised", f"raised {type(e).__name__}: {e}")
            continue
        score = as_score(value)
        if score is None:
            out.fail(i, "not_finite", f"returned {value!r} ({type(value).__name__}), not a finite number")
            continue
        out.set(i, score)
    return out


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
    request = ScoreRequest([[{"role": "user", "content": p}] for p in prompts], list(completions), answers=list(answers))
    out = _score_with(fn, request, ())
    failed = int(np.isnan(out.scores).sum())
    if failed:
        _warn(_qualified_name(fn), failed, len(completions), out.first_problem)
    return out.scores, failed


def _warn(name: str, failed: int, total: int, first: Optional[str]) -> None:
    logger.warning(
        "reward function %s could not score %d of %d samples (scored as NaN); first: %s",
        name, failed, total, first,
    )


class RuleSource(LocalSource):
    """``kind: rule``: a verifier or user function run in this process."""

    kind = "rule"

    def __init__(self, spec, task: Optional[str], tokenizer=None, field: str = "reward.function"):
        super().__init__(spec.name, spec.weight, spec.timeout_s)
        self.fn = resolve_reward_fn(spec.function, task, field)
        self.extras = extra_arguments(self.fn)
        self.tokenizer = tokenizer

    def score_batch(self, request: ScoreRequest) -> SourceResult:
        out = _score_with(self.fn, request, self.extras, self.tokenizer)
        failed = int(np.isnan(out.scores).sum())
        if failed:
            _warn(_qualified_name(self.fn), failed, len(request), out.first_problem)
        return out.result(0.0)
