"""Prompts: loading and checking them, tokenizing them, and ordering them across steps.

Every row remembers where it came from (``source``) so a bad row is reported by file and
1-based row number instead of failing somewhere deep inside a rollout.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from pipeline.data.messages import clean_messages



@dataclass
class PromptRow:
    messages: list[dict]
    answer: str | None
    source: str
    references: list[str] = field(default_factory=list)
    """Reference replies (similarity rewards, evaluation); empty when the row has none."""
    metadata: dict = field(default_factory=dict)
    """Free-form per-row data handed to reward sources and environments unchanged."""

    @property
    def prompt_text(self) -> str:
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        raise ValueError(f"{self.source}: no user message")


def _answer_text(value: Any, where: str, answer_key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{where}: {answer_key!r} must be a string or a number, got {type(value).__name__}"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {answer_key!r} is {value}, not a usable answer")
        # Parquet and pandas turn integer columns with gaps into floats; 85.0 means "85".
        if value.is_integer():
            return str(int(value))
    return str(value)


def _check_messages(messages: Any, where: str, key: str) -> list[dict]:
    checked = clean_messages(messages, where, key)
    if checked[-1]["role"] != "user":
        raise ValueError(f"{where}: field {key!r}: must end with a 'user' message, got {checked[-1]['role']!r}")
    return checked


def _references(value: Any, where: str, key: str) -> list[str]:
    """A row's reference replies: one string or a list of strings; absent is no reference."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{where}: {key!r} must be a string or a list of strings, got {value!r:.80}")
    return list(items)


def _to_prompt_row(
    row: Any,
    path: str,
    number: int,
    prompt_key: str,
    messages_key: str,
    answer_key: str,
    reference_key: str = "references",
    metadata_key: str = "metadata",
) -> PromptRow:
    where = f"{path}: row {number}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    # Columnar formats fill a key missing from some rows with None, so None counts as absent.
    if row.get(messages_key) is not None:
        messages = _check_messages(row[messages_key], where, messages_key)
    elif row.get(prompt_key) is not None:
        prompt = row[prompt_key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: {prompt_key!r} must be a non-empty string, got {prompt!r}")
        messages = [{"role": "user", "content": prompt}]
    else:
        raise ValueError(f"{where}: missing {prompt_key!r} or {messages_key!r}")
    answer = _answer_text(row.get(answer_key), where, answer_key)
    references = _references(row.get(reference_key), where, reference_key)
    metadata = row.get(metadata_key)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise ValueError(f"{where}: {metadata_key!r} must be an object, got {type(metadata).__name__}")
    return PromptRow(
        messages=messages, answer=answer, source=f"{path}:row {number}", references=references, metadata=metadata
    )


def _read_jsonl(path: str) -> Iterable[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: row {number}: invalid JSON ({e})") from None


def _read_json(path: str) -> Iterable[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: a .json prompt file must hold a list of objects, got {type(data).__name__}"
        )
    return enumerate(data, start=1)


def _read_parquet(path: str) -> Iterable[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for unreadable files
        raise ValueError(f"{path}: cannot read Parquet ({e})") from None
    return enumerate(table.to_pylist(), start=1)


def _read_saved_dataset(path: str) -> Iterable[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # FileNotFoundError, json errors, ... from an incomplete directory
        raise ValueError(f"{path}: not a directory written by datasets' save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"{path}: a saved DatasetDict needs a 'train' split, found {sorted(ds.keys())}"
            )
        ds = ds["train"]
    return enumerate(ds.to_list(), start=1)


def load_rows(
    path: str,
    prompt_key: str = "prompt",
    messages_key: str = "messages",
    answer_key: str = "answer",
    reference_key: str = "references",
    metadata_key: str = "metadata",
) -> list[PromptRow]:
    """Prompt rows of a ``.jsonl``, ``.json`` or ``.parquet`` file or a ``save_to_disk`` directory."""
    path = os.fspath(path)
    return [
        _to_prompt_row(row, path, number, prompt_key, messages_key, answer_key, reference_key, metadata_key)
        for number, row in read_records(path)
    ]


def read_records(path: str, kind: str = "prompt") -> Iterable[tuple[int, Any]]:
    """``(1-based row number, raw row)`` of a ``.jsonl``, ``.json`` or ``.parquet`` file or a
    ``save_to_disk`` directory; ``kind`` names the file in errors ("prompt", "preference")."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_saved_dataset(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: {kind} file does not exist")
    if path.endswith(".jsonl"):
        return _read_jsonl(path)
    if path.endswith(".json"):
        return _read_json(path)
    if path.endswith(".parquet"):
        return _read_parquet(path)
    raise ValueError(
        f"{path}: unknown {kind} file type; use .jsonl, .json, .parquet or a save_to_disk directory"
    )


def task_prompt_rows(rows: list[dict], task: str, *, split: str = "") -> list[PromptRow]:
    """:func:`pipeline.tasks.generate_rows` output as prompt rows (``split`` only labels ``source``)."""
    label = f"task {task} {split} #" if split else f"task {task} #"
    return [
        PromptRow(
            messages=[{"role": "user", "content": row["prompt"]}],
            answer=row["answer"],
            source=f"{label}{i}",
            references=list(row.get("references", [])),
            metadata=dict(row.get("metadata", {})),
        )
        for i, row in enumerate(rows, start=1)
    ]


def _load_files(paths: list[str], data_cfg) -> list[PromptRow]:
    rows: list[PromptRow] = []
    for path in paths:
        rows.extend(
            load_rows(
                path,
                data_cfg.prompt_key,
                data_cfg.messages_key,
                data_cfg.answer_key,
                data_cfg.reference_key,
                data_cfg.metadata_key,
            )
        )
    return rows


def load_prompt_files(data_cfg) -> tuple[list[PromptRow], list[PromptRow]]:
    """Train and eval prompts from ``data.train_files`` / ``data.eval_files`` (``data.task``
    null; the built-in tasks' prompts: :func:`pipeline.tasks.prompt_splits`)."""
    if not data_cfg.train_files:
        raise ValueError("data.train_files is empty and data.task is null: there are no prompts")
    train_rows = _load_files(list(data_cfg.train_files), data_cfg)
    if not train_rows:
        raise ValueError(f"data.train_files={list(data_cfg.train_files)} hold no prompt rows")
    return train_rows, _load_files(list(data_cfg.eval_files), data_cfg)


def token_ids(encoded: Any, source: str = "chat template") -> list[int]:
    """``apply_chat_template(..., tokenize=True)`` output (or a tokenizer call's) as a list of
    ids: transformers 5 returns a BatchEncoding by default, older versions a plain list."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], (list, tuple)):
        if len(encoded) != 1:
            raise ValueError(f"{source}: chat template produced {len(encoded)} sequences, expected 1")
        encoded = encoded[0]
    return [int(t) for t in encoded]


def encode_prompts(tokenizer, rows: list[PromptRow], max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each row's chat, ending with the assistant generation prompt."""
    if not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise ValueError(f"data.max_prompt_tokens={max_prompt_tokens!r} must be an integer >= 1")
    encoded = []
    for row in rows:
        ids = token_ids(
            tokenizer.apply_chat_template(row.messages, add_generation_prompt=True, tokenize=True),
            row.source,
        )
        if len(ids) > max_prompt_tokens:
            raise ValueError(
                f"{row.source}: prompt has {len(ids)} tokens, more than "
                f"data.max_prompt_tokens={max_prompt_tokens}"
            )
        encoded.append(ids)
    return encoded


class PromptStream:
    """Row indices for successive steps: shuffled per epoch, reproducible, resumable.

    A batch never mixes two epochs; the leftover rows at the end of an epoch are skipped so that
    every step sees ``batch_size`` distinct prompts.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int):
        if not isinstance(num_rows, int) or num_rows < 1:
            raise ValueError(f"PromptStream: num_rows={num_rows!r} must be >= 1 (no training prompts)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"prompts_per_step={batch_size!r} must be an integer >= 1")
        if batch_size > num_rows:
            raise ValueError(
                f"prompts_per_step={batch_size} is larger than the {num_rows} training prompts"
            )
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order_epoch: int | None = None
        self._order: list[int] = []

    def _epoch_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            order = list(range(self.num_rows))
            random.Random(self.seed + self.epoch).shuffle(order)
            self._order, self._order_epoch = order, self.epoch
        return self._order

    def next_batch(self) -> list[int]:
        if self.position + self.batch_size > self.num_rows:
            self.epoch += 1
            self.position = 0
        batch = self._epoch_order()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, position = state["epoch"], state["position"]
        except (KeyError, TypeError):
            raise ValueError(
                f"PromptStream.load_state_dict: expected a dict with 'epoch' and 'position', got {state!r}"
            ) from None
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"PromptStream.load_state_dict: epoch={epoch!r} must be an integer >= 0")
        if not isinstance(position, int) or not 0 <= position <= self.num_rows:
            raise ValueError(
                f"PromptStream.load_state_dict: position={position!r} must be within "
                f"[0, {self.num_rows}] (the number of training prompts changed?)"
            )
        self.epoch, self.position = epoch, position
