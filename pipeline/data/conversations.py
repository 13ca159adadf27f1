"""Conversations for supervised fine-tuning, and their assistant-token masks.

A conversation row is ``{"messages": [{"role": "system"|"user"|"assistant", "content": str},
...]}`` with one or more assistant turns. Single-turn rows keep working: ``{"prompt": str,
"answer": str}`` becomes ``[user, assistant]``, and ``{"messages": [..., user], "answer": str}``
gets the answer appended as the assistant turn.

:func:`encode_conversation` renders a conversation with the model's own chat template and marks
every assistant turn's tokens, its end-of-turn token included, so the loss teaches the model to
answer and to stop, on every turn and not only the last. Templates do not all render a
conversation as the concatenation of its turns, so the turn spans are found in that order of
preference:

1. ``{% generation %}`` blocks in the template (transformers' ``return_assistant_tokens_mask``);
2. prefix renders: the conversation up to a turn's question with the generation prompt, and up to
   the turn's end, must be prefixes of the whole render; the turn is what lies between;
3. the turn's content, searched in order in the whole render (templates that rewrite earlier
   turns, e.g. dropping reasoning, still keep the reply text); the turn starts right after the
   template's generation prompt before it, so what a template writes between the two (Qwen3's
   empty ``<think></think>`` block on the last turn) is masked as the reply the model would
   generate there.

If none of these finds every turn, the template cannot be masked and a ``ValueError`` names the
model and the turn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from pipeline.data.messages import clean_messages
from pipeline.data.rows import read_records
from pipeline.data.templates import generation_prompt, render

# End-of-turn markers of common chat templates; a turn's mask ends after the first one that
# follows its content (the tokenizer's own eos token is always tried first).
_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class Conversation:
    messages: list[dict]
    source: str
    """``file:row N`` (or ``task support #N``) for error messages."""


def check_conversation(messages: Any, where: str, key: str = "messages") -> list[dict]:
    """``messages`` as a clean list of ``{"role", "content"}`` dicts with at least one assistant
    turn, each after some other message; raises ``ValueError`` naming ``where`` and the field."""
    checked = clean_messages(messages, where, key)
    if checked[0]["role"] == "assistant":
        raise ValueError(f"{where}: field {key + '[0]'!r}: a conversation must open with a system or user message")
    if not any(m["role"] == "assistant" for m in checked):
        raise ValueError(f"{where}: field {key!r}: has no assistant turn to learn from")
    return checked


def conversation_from_row(
    row: Any, where: str, messages_key: str = "messages", prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[dict]:
    """The messages of one raw row (a conversation, or a single-turn prompt/answer row)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    answer = row.get(answer_key)
    if answer is not None and not isinstance(answer, str):
        raise ValueError(f"{where}: field {answer_key!r}: must be a string, got {type(answer).__name__}")
    # Columnar formats fill a key missing from some rows with None, so None counts as absent.
    if row.get(messages_key) is not None:
        messages = row[messages_key]
        if answer is not None and isinstance(messages, (list, tuple)):
            messages = list(messages) + [{"role": "assistant", "content": answer}]
        return check_conversation(messages, where, messages_key)
    prompt = row.get(prompt_key)
    if prompt is None:
        raise ValueError(f"{where}: missing field {messages_key!r} (or {prompt_key!r} with {answer_key!r})")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: field {prompt_key!r}: must be a non-empty string, got {prompt!r:.80}")
    if answer is None:
        raise ValueError(f"{where}: field {answer_key!r}: missing; a prompt row needs an answer to learn from")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def load_conversations(
    path: str, messages_key: str = "messages", prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[Conversation]:
    """Conversations of a ``.jsonl`` / ``.json`` / ``.parquet`` file or ``save_to_disk`` dir."""
    path = os.fspath(path)
    out = []
    for number, row in read_records(path, kind="conversation"):
        where = f"{path}: row {number}"
        messages = conversation_from_row(row, where, messages_key, prompt_key, answer_key)
        out.append(Conversation(messages, f"{path}:row {number}"))
    if not out:
        raise ValueError(f"{path}: holds no conversations")
    return out


# ---------------------------------------------------------------------------------------------
# Rendering and masks


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return render(tokenizer, messages, add_generation_prompt, _model_name(tokenizer))


def _model_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _end_markers(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    markers = [tokenizer.eos_token] if tokenizer.eos_token else []
    return markers + [m for m in _END_MARKERS if m in vocab and m not in markers]


def _turn_end(text: str, start: int, stop: int, content: str, markers: list[str]) -> int:
    """End (exclusive) of the assistant turn that begins at ``start`` in ``text[:stop]``: just
    after the first end-of-turn marker following its content, else the turn without trailing
    whitespace."""
    found = text.find(content.strip(), start, stop) if content.strip() else -1
    after = found + len(content.strip()) if found >= 0 else start
    ends = [p + len(m) for m in markers if (p := text.find(m, after, stop)) >= 0]
    if ends:
        return min(ends)
    return start + len(text[start:stop].rstrip())


def _prefix_spans(tokenizer, messages: list[dict], full: str, markers: list[str]) -> Optional[list[tuple[int, int]]]:
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            return None
        spans.append((len(before), _turn_end(full, len(before), len(upto), message["content"], markers)))
    return spans


def _reply_texts(content: str) -> list[str]:
    """What a template may keep of a reply: all of it, or (templates of reasoning models drop
    the reasoning of earlier turns) the part after the last ``</think>``."""
    texts = [content.strip()]
    if "</think>" in content:
        texts.append(content.rsplit("</think>", 1)[-1].strip())
    return [t for t in texts if t]


def _search_spans(
    messages: list[dict], full: str, markers: list[str], gen_prompt: Optional[str] = None
) -> tuple[Optional[list[tuple[int, int]]], int]:
    """Spans found by searching each turn's content in order, each widened back to just after
    the generation prompt ``gen_prompt`` before it; ``(None, turn)`` when turn ``turn``'s
    content is missing from the render."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            # Earlier messages are skipped past so a reply quoted by the user is not taken.
            found = full.find(message["content"], cursor) if message["content"] else -1
            cursor = found + len(message["content"]) if found >= 0 else cursor
            continue
        start, content = -1, ""
        for content in _reply_texts(message["content"]):
            start = full.find(content, cursor)
            if start >= 0:
                break
        if start < 0:
            return None, i
        opened = full.rfind(gen_prompt, cursor, start) if gen_prompt else -1
        end = _turn_end(full, start, len(full), content, markers)
        if opened >= 0:
            start = opened + len(gen_prompt)
        spans.append((start, end))
        cursor = end
    return spans, -1


def _generation_prompt(tokenizer) -> Optional[str]:
    try:
        return generation_prompt(tokenizer)
    except ValueError:  # a template without one still masks by content
        return None


def _tokenize_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` with a mask of 1 on the ``spans``; each span and each stretch
    between spans is tokenized on its own, as a prompt and a generated reply are in RL."""
    ids: list[int] = []
    mask: list[int] = []
    cursor = 0
    for start, end in spans + [(len(text), len(text))]:
        for piece, flag in ((text[cursor:start], 0), (text[start:end], 1)):
            if piece:
                piece_ids = tokenizer.encode(piece, add_special_tokens=False)
                ids += piece_ids
                mask += [flag] * len(piece_ids)
        cursor = end
    return ids, mask


def _generation_tag_encoding(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise ValueError(
            f"chat template of {_model_name(tokenizer)!r}: its {{% generation %}} blocks mark no "
            f"assistant token of a conversation with {sum(m['role'] == 'assistant' for m in messages)} "
            "assistant turn(s)"
        )
    return ids, mask


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """``(ids, assistant_mask)`` of ``messages`` rendered with ``tokenizer``'s chat template.

    The mask is 1 on every assistant turn's tokens including its end-of-turn token, 0 on
    system and user turns, role headers and anything the template adds between turns.
    """
    name = _model_name(tokenizer)
    template = tokenizer.chat_template
    if not template:
        raise ValueError(f"{name}: the tokenizer has no chat template, so conversations cannot be rendered")
    templates = template.values() if isinstance(template, dict) else [template]
    if any("generation" in t and "endgeneration" in t for t in templates):
        return _generation_tag_encoding(tokenizer, messages)
    full = _render(tokenizer, messages, add_generation_prompt=False)
    markers = _end_markers(tokenizer)
    spans = _prefix_spans(tokenizer, messages, full, markers)
    if spans is None:
        spans, missing = _search_spans(messages, full, markers, _generation_prompt(tokenizer))
        if spans is None:
            raise ValueError(
                f"chat template of {name!r} cannot be masked: it is not prefix-stable and the content "
                f"of assistant turn messages[{missing}] does not appear in the rendered text; add "
                "{% generation %} blocks to the template or use a model whose template keeps replies verbatim"
            )
    return _tokenize_spans(tokenizer, full, spans)
