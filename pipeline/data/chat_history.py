"""The messages of one live chat (``rayppo chat``, the feedback app's chat task), cut to the
model's context, saved as a conversation row."""

from __future__ import annotations

import json
import os
from typing import Callable, Optional


class ChatHistory:
    """The messages of one chat: an optional system message, then alternating turns."""

    def __init__(self, system: Optional[str] = None):
        self.system = system
        self.turns: list[dict] = []

    @property
    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def reset(self) -> None:
        self.turns = []

    def fit(self, count_tokens: Callable[[list[dict]], int], budget: int) -> int:
        """Drop the oldest turns until the rendered prompt has at most ``budget`` tokens; returns
        how many were dropped. The last (user) message always stays; ``ValueError`` when even
        it alone is too long."""
        dropped = 0
        while count_tokens(self.messages) > budget:
            if len(self.turns) <= 1:
                raise ValueError(f"the message alone is longer than the {budget} tokens the context leaves for it")
            # Drop a whole exchange so the turns still alternate, starting with a user message.
            cut = 2 if len(self.turns) > 2 and self.turns[1]["role"] == "assistant" else 1
            del self.turns[:cut]
            dropped += cut
        return dropped

    def save(self, path: str) -> str:
        """``{"messages": [...]}``: a conversation row. A ``.jsonl`` file gets one more line (many
        chats build a data set); any other file is written whole, atomically."""
        row = {"messages": self.messages}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if path.endswith(".jsonl"):
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            return path
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(row, f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
        return path
