"""Token in, token out: the tokens a multi-turn trajectory appends after each assistant turn.

A trajectory is one token sequence: the opening messages rendered with the generation prompt,
then the engine's own ids for each assistant turn, then the environment's message and the next
generation prompt, and so on. Earlier turns are never re-tokenized: chat templates are not
append-only in general (some drop earlier reasoning, some re-render the system prompt), and
re-encoding a reply's text need not give back the ids the engine sampled.

The tokens of a new message are found once per message by rendering it after a fixed dummy
conversation and keeping what follows the dummy assistant turn's end-of-turn token: the
template's own turn markers, the message, and the next generation prompt. The dummy turn is cut
in that same render, where it is an earlier turn: a template may write the last turn otherwise
(Qwen3's adds an empty ``<think></think>`` block to the last assistant turn only). :class:`TurnTokens`
checks on construction that a conversation assembled this way decodes to the same text as
the template's rendering of the whole conversation, and raises a ``ValueError`` naming the
model for a template where it does not.
"""

from __future__ import annotations

from typing import Optional

from pipeline.data.templates import render

_DUMMY = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
_CHECK = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What is my name?"},
    {"role": "assistant", "content": "Your name is Ada."},
    {"role": "user", "content": "Thanks."},
]


def _ids(encoded) -> list[int]:
    """``apply_chat_template(tokenize=True)`` gives a list or a mapping, by version."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


class TurnTokens:
    """Chat-template pieces for growing a token sequence one message at a time."""

    def __init__(self, tokenizer, model_name: str = "", check: bool = True):
        self.tokenizer = tokenizer
        self.name = model_name or getattr(tokenizer, "name_or_path", "") or "the model"
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{self.name}: the tokenizer has no chat template; multi-turn rollouts need one")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{self.name}: the tokenizer has no end-of-sequence token to end assistant turns")
        self.end_of_turn = int(eos)
        self._opening = self.render_ids(_DUMMY[:1], add_generation_prompt=True)
        self._cache: dict[tuple[str, str], list[int]] = {}
        self._prefix: Optional[list[int]] = None
        self.message({"role": "user", "content": "Bye."})
        if check:
            self.check()

    def _dummy_cut(self, full: list[int]) -> int:
        """Where the dummy assistant turn of ``full`` ends (after its end-of-turn token)."""
        ends = [i for i in range(len(self._opening), len(full)) if full[i] == self.end_of_turn]
        if full[: len(self._opening)] != self._opening or not ends:
            raise ValueError(
                f"{self.name}: the chat template does not end an assistant turn with the end-of-sequence "
                f"token {self.tokenizer.eos_token!r} after the generation prompt, so a multi-turn trajectory "
                "cannot be grown token by token"
            )
        return ends[0] + 1

    def render_ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        text = render(self.tokenizer, messages, add_generation_prompt, self.name)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def opening(self, messages: list[dict]) -> list[int]:
        """The opening messages with the assistant generation prompt: the trajectory's prompt."""
        return self.render_ids(messages, add_generation_prompt=True)

    def close_turn(self, generated: list[int]) -> list[int]:
        """What must follow an assistant turn before the next message: nothing when the engine
        stopped on the end-of-turn token, else that token (a turn cut by its token limit)."""
        return [] if generated and generated[-1] == self.end_of_turn else [self.end_of_turn]

    def message(self, message: dict) -> list[int]:
        """The tokens after a closed assistant turn that add ``message`` and the next generation
        prompt: the template's markers around it, exactly as a whole-conversation render has them."""
        key = (message["role"], message["content"])
        if key not in self._cache:
            full = self.render_ids(_DUMMY + [dict(message)], add_generation_prompt=True)
            cut = self._dummy_cut(full)
            if self._prefix is None:
                self._prefix = full[:cut]
            elif full[:cut] != self._prefix:
                raise ValueError(
                    f"{self.name}: the chat template renders earlier turns differently once a "
                    f"{message['role']!r} message follows, so turns cannot be appended as tokens"
                )
            self._cache[key] = full[cut:]
        return list(self._cache[key])

    def assemble(self, messages: list[dict], replies: Optional[list[list[int]]] = None) -> list[int]:
        """``messages`` (opening, then alternating assistant / other turns) grown turn by turn,
        with each assistant turn's ids given (``replies``) or encoded from its text."""
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        ids = self.opening(messages[:first])
        replies = list(replies) if replies is not None else None
        for message in messages[first:]:
            if message["role"] == "assistant":
                reply = replies.pop(0) if replies else self.tokenizer.encode(message["content"], add_special_tokens=False)
                ids += list(reply) + self.close_turn(list(reply))
            else:
                ids += self.message(message)
        return ids

    def check(self) -> None:
        """A conversation grown turn by turn must read as the template's render of all of it."""
        grown = self.tokenizer.decode(self.assemble(_CHECK), skip_special_tokens=False)
        whole_ids = self.render_ids(_CHECK, add_generation_prompt=True)
        whole = self.tokenizer.decode(whole_ids, skip_special_tokens=False)
        if grown != whole:
            at = next((i for i, (a, b) in enumerate(zip(grown, whole)) if a != b), min(len(grown), len(whole)))
            raise ValueError(
                f"{self.name}: the chat template is not append-only: a conversation grown one turn "
                f"at a time reads {grown[max(0, at - 20): at + 20]!r} where the whole render reads "
                f"{whole[max(0, at - 20): at + 20]!r}; multi-turn rollouts need a template that "
                "renders earlier turns the same whatever follows"
            )
