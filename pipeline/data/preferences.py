"""Preference pairs for reward-model training, in TRL's format.

A row is either explicit::

    {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages, "margin": 0.5}

(a string prompt is one user message, a string reply one assistant message; ``margin`` is
optional; an optional ``group`` column names the pair's category, by which held-out accuracy is
also reported) or has an implicit prompt: ``{"chosen": messages, "rejected": messages}`` are whole
conversations sharing a prefix, and the prompt is their longest common prefix of messages. Column
names come from ``rm.prompt_key`` / ``chosen_key`` / ``rejected_key`` / ``margin_key`` /
``group_key``.

Either way a pair becomes :class:`PreferencePair` with ``chosen`` / ``rejected`` being the
assistant message(s) after the prompt. A bad row fails with ``<file>: row N: field 'chosen':
...`` while loading, before any worker starts.

:func:`reward_input_ids` is the one definition of what a reward model reads: the prompt and
reply rendered with the model's chat template, as the ``model`` reward source renders a sample,
so the trained model is scored on the tokens it was trained on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from pipeline.data.messages import clean_messages
from pipeline.data.rows import read_records, token_ids



@dataclass
class PreferencePair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    margin: float
    source: str
    """``file:row N`` (or ``task support #N``) for error messages."""
    group: str = ""
    """The pair's category (``rm.group_key``); empty: none."""


def _messages(value: Any, where: str, field: str, default_role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: field {field!r}: must be a string or a non-empty list of {{'role', 'content'}} dicts")
    return clean_messages(value, where, field)


def _check_reply(reply: list[dict], where: str, field: str) -> list[dict]:
    if reply[0]["role"] != "assistant":
        raise ValueError(f"{where}: field {field!r}: the reply after the prompt must start with an assistant message, got {reply[0]['role']!r}")
    if any(m["role"] == "system" for m in reply):
        raise ValueError(f"{where}: field {field!r}: a system message cannot be part of a reply")
    return reply


def _margin(value: Any, where: str, field: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: field {field!r}: must be a finite number, got {value!r:.80}")
    return float(value)


def _split_implicit(chosen: list[dict], rejected: list[dict], where: str, keys: tuple[str, str]) -> tuple[list[dict], list[dict], list[dict]]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise ValueError(
            f"{where}: field {keys[0]!r}: without a prompt column, chosen and rejected must be conversations "
            "sharing their opening messages (the prompt); they differ from the first message"
        )
    # The prompt ends just before the first differing assistant turn.
    while shared > 0 and chosen[shared - 1]["role"] == "assistant" and (shared == len(chosen) or shared == len(rejected)):
        shared -= 1
    prompt, c, r = chosen[:shared], chosen[shared:], rejected[shared:]
    for reply, field in ((c, keys[0]), (r, keys[1])):
        if not reply:
            raise ValueError(f"{where}: field {field!r}: has nothing after the prompt the two conversations share")
    return prompt, c, r


def _group(value: Any, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r}: must be a string naming the pair's category, got {value!r:.80}")
    return value


def pair_from_row(
    row: Any,
    where: str,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    margin_key: str = "margin",
    group_key: str = "group",
) -> PreferencePair:
    """One raw row as a :class:`PreferencePair` (``where`` is ``"<file>: row N"``)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    for key in (chosen_key, rejected_key):
        if row.get(key) is None:
            raise ValueError(f"{where}: field {key!r}: missing")
    chosen = _messages(row[chosen_key], where, chosen_key, "assistant")
    rejected = _messages(row[rejected_key], where, rejected_key, "assistant")
    if row.get(prompt_key) is None:
        if isinstance(row[chosen_key], str) or isinstance(row[rejected_key], str):
            raise ValueError(
                f"{where}: field {prompt_key!r}: missing; string replies need a prompt (or give chosen and "
                "rejected as whole conversations sharing their opening messages)"
            )
        prompt, chosen, rejected = _split_implicit(chosen, rejected, where, (chosen_key, rejected_key))
    else:
        prompt = _messages(row[prompt_key], where, prompt_key, "user")
    chosen, rejected = _check_reply(chosen, where, chosen_key), _check_reply(rejected, where, rejected_key)
    if prompt[-1]["role"] == "assistant":
        raise ValueError(f"{where}: field {prompt_key!r}: must end with a user or system message, not an assistant turn")
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        margin=_margin(row.get(margin_key), where, margin_key),
        source=where.replace(": row ", ":row "),
        group=_group(row.get(group_key), where, group_key),
    )


def load_pairs(
    path: str,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    margin_key: str = "margin",
    group_key: str = "group",
) -> list[PreferencePair]:
    """The pairs of a ``.jsonl`` / ``.json`` / ``.parquet`` file or ``save_to_disk`` directory."""
    path = os.fspath(path)
    pairs = [
        pair_from_row(row, f"{path}: row {number}", prompt_key, chosen_key, rejected_key, margin_key, group_key)
        for number, row in read_records(path, kind="preference")
    ]
    if not pairs:
        raise ValueError(f"{path}: holds no preference pairs")
    return pairs


def reward_input_ids(tokenizer, prompt: list[dict], reply: list[dict] | str) -> list[int]:
    """Token ids a reward model scores for ``reply`` to ``prompt``: the conversation rendered
    and tokenized by ``tokenizer``'s chat template without a generation prompt, exactly as the
    ``model`` reward source renders a sample (``rollout_workers/reward_model.py``)."""
    if isinstance(reply, str):
        reply = [{"role": "assistant", "content": reply}]
    chat = list(prompt) + list(reply)
    return token_ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False), "reward model input")
