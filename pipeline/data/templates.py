"""What a model's chat template must be able to do, checked before anything heavy starts.

Every stage renders conversations with the model's own template. Templates differ in ways a run
only meets minutes in: Gemma-3's has no system role (it folds a leading system message into the
first user turn and raises on any other order than user/assistant alternation), some templates
have no generation prompt, and each family ends a turn with its own marker. These checks render
the conversations a run will render and turn a template's refusal into a ``ValueError`` naming
the model and the template's reason.
"""

from __future__ import annotations

from typing import Optional

_PROBE = [{"role": "user", "content": "Hi."}]


def _name(tokenizer, where: Optional[str]) -> str:
    return where or getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def render(tokenizer, messages: list[dict], add_generation_prompt: bool, where: Optional[str] = None, **kwargs) -> str:
    """``messages`` rendered by the template; its refusal (``raise_exception`` in the template,
    a missing variable) becomes a ``ValueError`` naming ``where`` and the conversation's roles."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception as exc:  # jinja2's TemplateError (the template's raise_exception) and others
        reason = str(exc).strip() or type(exc).__name__
        roles = "/".join(m.get("role", "?") for m in messages)
        raise ValueError(
            f"{_name(tokenizer, where)}: the chat template cannot render a conversation of roles "
            f"{roles}: {reason}"
        ) from None


def generation_prompt(tokenizer, where: Optional[str] = None) -> str:
    """The text the template appends to open an assistant turn (``<|im_start|>assistant\\n``,
    ``<start_of_turn>model\\n``, ...); ``ValueError`` when it appends nothing."""
    without = render(tokenizer, _PROBE, False, where)
    with_prompt = render(tokenizer, _PROBE, True, where)
    if not with_prompt.startswith(without) or len(with_prompt) == len(without):
        raise ValueError(
            f"{_name(tokenizer, where)}: the chat template has no generation prompt (rendering with "
            "add_generation_prompt=True adds nothing after the last message), so the engines would "
            "not know where the assistant's reply starts"
        )
    return with_prompt[len(without):]


def check_chat_template(tokenizer, where: Optional[str] = None, conversations: tuple = ()) -> None:
    """The tokenizer has a chat template with a generation prompt and an end-of-turn token, and
    renders each of ``conversations`` (lists of messages); ``ValueError`` naming ``where``."""
    name = _name(tokenizer, where)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{name}: the tokenizer has no chat template")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name}: the tokenizer has no end-of-sequence token to end assistant turns with")
    generation_prompt(tokenizer, where)
    for messages in conversations:
        render(tokenizer, messages, messages[-1]["role"] != "assistant", where)
