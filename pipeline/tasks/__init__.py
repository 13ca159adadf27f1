"""Built-in tasks as a registry: one module per task (rows, verifier, optional hooks), looked
up by name in :mod:`pipeline.tasks.registry`."""

from pipeline.tasks.arithmetic import arithmetic_digit_credit
from pipeline.tasks.countdown import parse_countdown_prompt
from pipeline.tasks.registry import REGISTRY, TASKS, generate_rows, get, prompt_splits, split_rows, verify

__all__ = [
    "REGISTRY", "TASKS", "arithmetic_digit_credit", "generate_rows", "get", "parse_countdown_prompt",
    "prompt_splits", "split_rows", "verify",
]
