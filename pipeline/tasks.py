"""Built-in seeded tasks whose answers can be checked exactly.

``arithmetic``: "Compute 47+38." -> "85". ``countdown``: "Use 3 5 7 to make 22." -> any expression
over a subset of those numbers (each at most once) that equals the target, e.g. "3*5+7".
``support``: a support-assistant chat task scored by a hidden gold rule
(:mod:`pipeline.envs.support`); its rows also carry ``references`` and ``metadata``.
``memory``: the multi-turn memory task (:mod:`pipeline.envs.memory`); its rows open a dialogue
that ``pipeline.envs.memory:MemoryEnv`` continues.

Prompts are kept short on purpose: the models trained on them are tiny and the tokenizer is
trained on exactly this text.
"""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction
from typing import Iterator

TASKS = ("arithmetic", "countdown", "support", "memory")

_COUNTDOWN_MIN, _COUNTDOWN_MAX = 1, 9
_COUNTDOWN_MAX_TARGET = 200
_COUNTDOWN_PROMPT = re.compile(r"Use ((?:\d+ )*\d+) to make (\d+)\.")
# Only what the grammar needs; anything else (names, attributes, calls) is rejected before parsing.
_COUNTDOWN_CHARS = re.compile(r"[0-9\s+\-*/()]+")
_COUNTDOWN_MAX_LINE = 200
# Operator precedence of the rendered expression: atoms bind tighter than *, which binds tighter than + -.
_ATOM, _MUL, _ADD = 3, 2, 1


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"data.task={task!r} is not a built-in task; choose one of {list(TASKS)}")


def _check_digits(min_digits: int, max_digits: int) -> None:
    if not isinstance(min_digits, int) or min_digits < 1:
        raise ValueError(f"data.min_digits={min_digits!r} must be an integer >= 1")
    if not isinstance(max_digits, int) or max_digits < min_digits:
        raise ValueError(
            f"data.max_digits={max_digits!r} must be an integer >= data.min_digits={min_digits}"
        )
    if max_digits > 18:
        raise ValueError(f"data.max_digits={max_digits} is too large (at most 18)")


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


def _combine(left: tuple, right: tuple, op: str) -> tuple:
    """Join two (text, value, precedence) nodes, adding only the parentheses the grammar needs."""
    (ltext, lval, lprec), (rtext, rval, rprec) = left, right
    if op == "*":
        ltext = ltext if lprec >= _MUL else f"({ltext})"
        rtext = rtext if rprec >= _MUL else f"({rtext})"
        return f"{ltext}*{rtext}", lval * rval, _MUL
    if op == "-":
        rtext = rtext if rprec > _ADD else f"({rtext})"
        return f"{ltext}-{rtext}", lval - rval, _ADD
    return f"{ltext}+{rtext}", lval + rval, _ADD


def _countdown_row(rng: random.Random) -> dict:
    while True:
        numbers = [rng.randint(_COUNTDOWN_MIN, _COUNTDOWN_MAX) for _ in range(rng.choice((3, 4)))]
        nodes = [(str(n), n, _ATOM) for n in numbers]
        while len(nodes) > 1:
            i, j = rng.sample(range(len(nodes)), 2)
            left, right = nodes[i], nodes[j]
            nodes = [node for k, node in enumerate(nodes) if k not in (i, j)]
            op = rng.choice("+-*")
            if op == "-" and left[1] < right[1]:
                left, right = right, left
            nodes.append(_combine(left, right, op))
        text, target, _ = nodes[0]
        if 0 < target <= _COUNTDOWN_MAX_TARGET:
            # The display order is shuffled so it does not spell out the solution's order.
            rng.shuffle(numbers)
            shown = " ".join(map(str, numbers))
            return {"prompt": f"Use {shown} to make {target}.", "answer": text}


def _iter_rows(task: str, seed: int, min_digits: int, max_digits: int) -> Iterator[dict]:
    _check_task(task)
    if task == "support":
        from pipeline.envs import support

        yield from support.iter_rows(seed)
        return
    if task == "memory":
        from pipeline.envs import memory

        yield from memory.iter_rows(seed)
        return
    _check_digits(min_digits, max_digits)
    rng = random.Random(seed)
    while True:
        if task == "arithmetic":
            yield _arithmetic_row(rng, min_digits, max_digits)
        else:
            yield _countdown_row(rng)


def generate_rows(
    task: str, n: int, seed: int, min_digits: int = 1, max_digits: int = 2
) -> list[dict]:
    """``n`` rows ``{"prompt", "answer"}`` of ``task``, the same for the same arguments.

    Prompts may repeat; use :func:`split_rows` for disjoint, duplicate-free splits.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"generate_rows: n={n!r} must be a non-negative integer")
    rows = _iter_rows(task, seed, min_digits, max_digits)
    return [next(rows) for _ in range(n)]


def split_rows(
    task: str,
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
    for draws, row in enumerate(_iter_rows(task, seed, min_digits, max_digits), start=1):
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            unique.append(row)
            if len(unique) == wanted:
                break
        if draws >= max_draws:
            raise ValueError(
                f"data.num_train + data.num_eval = {wanted} distinct {task!r} prompts were asked "
                f"for, but only {len(unique)} were found with data.min_digits={min_digits}, "
                f"data.max_digits={max_digits}; lower the counts or widen the digits"
            )
    return unique[num_eval:], unique[:num_eval]


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


class _Rejected(Exception):
    """The completion uses syntax outside the countdown grammar."""


def _countdown_value(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an expression made only of int literals, + - * / and parentheses."""
    if isinstance(node, ast.Expression):
        return _countdown_value(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left = _countdown_value(node.left, used)
        right = _countdown_value(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError
        return left / right
    raise _Rejected


def parse_countdown_prompt(prompt: str) -> tuple[list[int], int]:
    """The numbers and target of a countdown prompt ("Use 3 5 7 to make 22.")."""
    match = _COUNTDOWN_PROMPT.search(prompt)
    if match is None:
        raise ValueError(
            f"tasks.verify: countdown prompt {prompt!r} does not contain 'Use <numbers> to make "
            f"<target>.'"
        )
    return [int(x) for x in match.group(1).split()], int(match.group(2))


def _verify_countdown(completion: str, prompt: str) -> float:
    numbers, target = parse_countdown_prompt(prompt)
    lines = completion.strip().splitlines()
    line = lines[0].strip() if lines else ""
    if not line or len(line) > _COUNTDOWN_MAX_LINE or not _COUNTDOWN_CHARS.fullmatch(line):
        return 0.0
    try:
        tree = ast.parse(line, mode="eval")
        used: list[int] = []
        value = _countdown_value(tree, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, _Rejected):
        return 0.0
    available = list(numbers)
    for n in used:
        if n not in available:
            return 0.0
        available.remove(n)
    return 1.0 if value == target else 0.0


def verify(task: str, completion: str, answer: str, prompt: str) -> float:
    """1.0 if ``completion`` solves ``prompt`` of ``task``, else 0.0 (``support``: the gold
    score in [0, 1])."""
    _check_task(task)
    if task == "support":
        from pipeline.envs import support

        return support.gold_score(prompt, completion, answer)
    if task == "memory":
        from pipeline.envs import memory

        return memory.verify(completion, answer)
    if task == "arithmetic":
        if answer is None:
            raise ValueError("tasks.verify: the arithmetic task needs a reference answer, got None")
        return _verify_arithmetic(completion, str(answer))
    return _verify_countdown(completion, prompt)
