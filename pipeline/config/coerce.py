"""Config values checked against their fields' annotations, and normalised.

:func:`coerce` turns one value into its field's type or raises ``ValueError`` naming the field
(an ``int`` given for a ``float`` field becomes a float, ``"1e-5"`` a float); the loader applies
it key by key, :func:`normalise_types` to a whole config built in Python, and the sections'
own parsers (reward sources, the tune search space) to the values they read.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

_NONE_TYPE = type(None)
FAIL = object()


@functools.lru_cache(maxsize=None)
def field_hints(cls: type) -> dict[str, Any]:
    # The annotations are strings (``from __future__ import annotations``); resolve them once.
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in names}


def is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def optional_inner(hint: Any) -> Any | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not _NONE_TYPE]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def describe(hint: Any) -> str:
    inner = optional_inner(hint)
    if inner is not None:
        return f"{describe(inner)} or null"
    if typing.get_origin(hint) is list:
        return f"list of {describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is dict:
        key, val = typing.get_args(hint)
        return f"mapping of {describe(key)} to {describe(val)}"
    if hint is Any:
        return "any value"
    return getattr(hint, "__name__", str(hint))


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def try_coerce(value: Any, hint: Any) -> Any:
    inner = optional_inner(hint)
    if inner is not None:
        return None if value is None else try_coerce(value, inner)
    if hint is bool:
        return value if isinstance(value, bool) else FAIL
    if hint is int:
        if isinstance(value, bool):
            return FAIL
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return FAIL
    if hint is float:
        if isinstance(value, bool):
            return FAIL
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads ``1e-5`` (no dot) as a string.
            try:
                return float(value.strip())
            except ValueError:
                return FAIL
        return FAIL
    if hint is str:
        return value if isinstance(value, str) else FAIL
    if typing.get_origin(hint) is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            return FAIL
        items = [try_coerce(v, item_hint) for v in value]
        return FAIL if any(v is FAIL for v in items) else items
    if typing.get_origin(hint) is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            return FAIL
        pairs = [(try_coerce(k, key_hint), try_coerce(v, value_hint)) for k, v in value.items()]
        return FAIL if any(k is FAIL or v is FAIL for k, v in pairs) else dict(pairs)
    if hint is Any:
        return value
    raise TypeError(f"unsupported config annotation {hint!r}")


def coerce(value: Any, hint: Any, name: str) -> Any:
    out = try_coerce(value, hint)
    if out is FAIL:
        raise ValueError(f"{name}: expected {describe(hint)}, got {short(value)}")
    return out


def normalise_types(obj: Any, cls: type, prefix: str) -> None:
    if not isinstance(obj, cls):
        raise ValueError(f"{prefix}: expected a {cls.__name__}, got {short(obj)}")
    for name, hint in field_hints(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        value = getattr(obj, name)
        if is_section(hint):
            normalise_types(value, hint, dotted)
        else:
            setattr(obj, name, coerce(value, hint, dotted))
