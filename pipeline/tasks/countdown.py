"""``countdown``: "Use 3 5 7 to make 22." -> any expression over a subset of those numbers
(each at most once) that equals the target, e.g. "3*5+7"."""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction
from typing import Iterator

from pipeline.tasks.base import Task, check_digits

_COUNTDOWN_MIN, _COUNTDOWN_MAX = 1, 9
_COUNTDOWN_MAX_TARGET = 200
_COUNTDOWN_PROMPT = re.compile(r"Use ((?:\d+ )*\d+) to make (\d+)\.")
# Only what the grammar needs; anything else (names, attributes, calls) is rejected before parsing.
_COUNTDOWN_CHARS = re.compile(r"[0-9\s+\-*/()]+")
_COUNTDOWN_MAX_LINE = 200
# Operator precedence of the rendered expression: atoms bind tighter than *, which binds tighter than + -.
_ATOM, _MUL, _ADD = 3, 2, 1


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


def _rows(seed: int, min_digits: int, max_digits: int) -> Iterator[dict]:
    check_digits(min_digits, max_digits)  # not used by countdown, checked all the same
    rng = random.Random(seed)
    while True:
        yield _countdown_row(rng)


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


TASK = Task("countdown", rows=_rows, verify=lambda completion, answer, prompt: _verify_countdown(completion, prompt))
