"""What a built-in task is: seeded rows, a verifier, and the optional hooks other stages use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional


@dataclass(frozen=True)
class Task:
    """One built-in task (``data.task``). Only ``rows`` and ``verify`` are required; a stage
    that needs a hook the task lacks falls back to its generic path (or says the task cannot)."""

    name: str
    rows: Callable[[int, int, int], Iterator[dict]]
    """``(seed, min_digits, max_digits)`` -> endless seeded rows ``{"prompt", "answer"}`` (and
    optionally ``references``, ``metadata``)."""
    verify: Callable[[str, Optional[str], str], float]
    """``(completion, answer, prompt)`` -> 1.0 if solved, else 0.0 (or a gold score in [0, 1])."""
    prompt_splits: Optional[Callable[[Any], tuple[list, list]]] = None
    """``data_cfg`` -> (train, eval) prompt rows, when they are not the generated rows' first
    turns (``memory``: distinct dialogues)."""
    sft_conversations: Optional[Callable[[Any, str], list]] = None
    """``(cfg, split)`` -> the SFT stage's demonstrations (:class:`pipeline.data.conversations.Conversation`)."""
    preference_pairs: Optional[Callable[[Any, str], list]] = None
    """``(cfg, split)`` -> the RM stage's pairs (:class:`pipeline.data.preferences.PreferencePair`)."""
    corpus: Optional[Callable[[int, int], list[list[dict]]]] = None
    """``(size, seed)`` -> chats the tokenizer of ``rayppo init-model`` is trained on."""


def check_digits(min_digits: int, max_digits: int) -> None:
    if not isinstance(min_digits, int) or min_digits < 1:
        raise ValueError(f"data.min_digits={min_digits!r} must be an integer >= 1")
    if not isinstance(max_digits, int) or max_digits < min_digits:
        raise ValueError(
            f"data.max_digits={max_digits!r} must be an integer >= data.min_digits={min_digits}"
        )
    if max_digits > 18:
        raise ValueError(f"data.max_digits={max_digits} is too large (at most 18)")


def split_rows(
    task: Task,
    num_train: int,
    num_eval: int,
    seed: int,
    min_digits: int = 1,
    max_digits: int = 2,
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and eval rows with no prompt appearing twice anywhere.

    The eval rows are drawn first, so the held-out set does not change when ``num_train`` does.
    """
    if not isinstance(num_train, int) or num_train < 1:
        raise ValueError(f"data.num_train={num_train!r} must be an integer >= 1")
    if not isinstance(num_eval, int) or num_eval < 0:
        raise ValueError(f"data.num_eval={num_eval!r} must be an integer >= 0")
    wanted = num_train + num_eval
    seen: set[str] = set()
    unique: list[dict] = []
    # A small prompt space (e.g. one-digit arithmetic) can hold fewer distinct prompts than asked
    # for; stop after a generous number of draws instead of looping forever.
    max_draws = 50 * wanted + 10_000
    for draws, row in enumerate(task.rows(seed, min_digits, max_digits), start=1):
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            unique.append(row)
            if len(unique) == wanted:
                break
        if draws >= max_draws:
            raise ValueError(
                f"data.num_train + data.num_eval = {wanted} distinct {task.name!r} prompts were asked "
                f"for, but only {len(unique)} were found with data.min_digits={min_digits}, "
                f"data.max_digits={max_digits}; lower the counts or widen the digits"
            )
    return unique[num_eval:], unique[:num_eval]
