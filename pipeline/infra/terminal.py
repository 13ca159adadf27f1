"""Terminal I/O of a conversation: what ``rayppo chat`` and a person playing the user
(:class:`pipeline.envs.users.HumanUserEnv`) type and read."""

from __future__ import annotations

import re
import sys
from typing import Iterable, Optional, TextIO

# Control characters a model may emit (escape sequences could rewrite the terminal); the
# history keeps the text as generated, only the screen gets the replacement character.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub("\ufffd", text)


class TerminalChat:
    """Terminal I/O of a conversation: read what the person types, show replies as they stream."""

    def __init__(self, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
                 user_prompt: str = "you> ", reply_prefix: str = "assistant> "):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.user_prompt = user_prompt
        self.reply_prefix = reply_prefix

    def read_message(self) -> Optional[str]:
        """The next line typed (without its newline); ``None`` at the end of input."""
        self.stdout.write(self.user_prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            self.stdout.write("\n")
            return None
        return line.rstrip("\r\n")

    def show_stream(self, pieces: Iterable[str]) -> str:
        """Print the reply piece by piece as it arrives; return the whole text. On Ctrl-C the
        generation stops and the part shown so far is returned."""
        self.stdout.write(self.reply_prefix)
        self.stdout.flush()
        parts: list[str] = []
        iterator = iter(pieces)
        try:
            for piece in iterator:
                parts.append(piece)
                self.stdout.write(printable(piece))
                self.stdout.flush()
        except KeyboardInterrupt:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            self.stdout.write(" [interrupted]")
        self.stdout.write("\n")
        self.stdout.flush()
        return "".join(parts)

    def show_reply(self, text: str) -> None:
        self.show_stream([text])

    def note(self, text: str) -> None:
        self.stdout.write(f"[{text}]\n")
        self.stdout.flush()
