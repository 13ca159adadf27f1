"""Chat messages as every reader of them checks them: prompt rows, SFT conversations,
preference pairs and what environments return."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


def clean_messages(value: Any, where: str, field: str, roles: tuple[str, ...] = ROLES, error: type[Exception] = ValueError) -> list[dict]:
    """``value`` as a new list of plain ``{"role", "content"}`` dicts (other keys dropped).

    A problem raises ``error`` naming ``where``, the field and the item:
    ``chats.jsonl: row 3: field 'messages[1]': role 'bot' is not one of [...]``.
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise error(f"{where}: field {field!r}: must be a non-empty list of {{'role', 'content'}} dicts")
    checked = []
    for i, message in enumerate(value):
        item = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise error(f"{where}: field {item!r}: must be a dict, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in roles:
            raise error(f"{where}: field {item!r}: role {role!r} is not one of {list(roles)}")
        if not isinstance(content, str):
            raise error(f"{where}: field {item!r}: content must be a string, got {type(content).__name__}")
        checked.append({"role": role, "content": content})
    return checked
