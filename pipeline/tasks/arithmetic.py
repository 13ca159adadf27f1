"""``arithmetic``: "Compute 47+38." -> "85" (operands of ``data.min_digits`` to
``data.max_digits`` digits), checked exactly; :func:`arithmetic_digit_credit` is a shaped
variant for ``reward.function``."""

from __future__ import annotations

import random
import re
from typing import Iterator

from pipeline.tasks.base import Task, check_digits


def _random_operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _arithmetic_row(rng: random.Random, min_digits: int, max_digits: int) -> dict:
    a = _random_operand(rng, min_digits, max_digits)
    b = _random_operand(rng, min_digits, max_digits)
    if rng.random() < 0.5:
        return {"prompt": f"Compute {a}+{b}.", "answer": str(a + b)}
    if a < b:
        a, b = b, a
    return {"prompt": f"Compute {a}-{b}.", "answer": str(a - b)}


def _rows(seed: int, min_digits: int, max_digits: int) -> Iterator[dict]:
    check_digits(min_digits, max_digits)
    rng = random.Random(seed)
    while True:
        yield _arithmetic_row(rng, min_digits, max_digits)


def _verify_arithmetic(completion: str, answer: str) -> float:
    text = completion.strip()
    answer = answer.strip()
    if not answer or not text.startswith(answer):
        return 0.0
    rest = text[len(answer):]
    if rest[:1].isdigit():
        return 0.0
    # "8.5" is not the integer 8.
    if rest[:1] == "." and rest[1:2].isdigit():
        return 0.0
    return 1.0


def arithmetic_digit_credit(prompt: str, completion: str, answer: str) -> float:
    """Shaped arithmetic reward: 1.0 when exact, else up to 0.5 for digits right in place.

    Digits are compared aligned from the right (units with units), over the longer of the two
    numbers, so "85" for 86 earns 0.25 and "185" for 86 earns 0.5 * 1/3. Exact answers always
    score strictly more than any near miss. Use it as ``reward.function`` with
    ``reward.eval_function: builtin`` so accuracy is still measured by exact match.
    """
    if _verify_arithmetic(completion, answer) == 1.0:
        return 1.0
    match = re.match(r"\s*-?\d+", completion)
    if match is None:
        return 0.0
    predicted, expected = match.group().strip(), answer.strip()
    width = max(len(predicted), len(expected))
    same = sum(a == b for a, b in zip(reversed(predicted), reversed(expected)))
    return 0.5 * same / width


def _verify(completion: str, answer, prompt: str) -> float:
    if answer is None:
        raise ValueError("tasks.verify: the arithmetic task needs a reference answer, got None")
    return _verify_arithmetic(completion, str(answer))


TASK = Task("arithmetic", rows=_rows, verify=_verify)
