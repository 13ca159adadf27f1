"""Token in, token out with the tiny model's real tokenizer and ChatML template."""

from __future__ import annotations

import copy

import pytest

from rollout_workers.turn_tokens import TurnTokens

CONVERSATION = [
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What is my name?"},
    {"role": "assistant", "content": "Your name is Ada."},
    {"role": "tool", "content": "lookup: ok"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_message_tokens_are_the_templates_markers_around_the_message(tokenizer):
    tokens = TurnTokens(tokenizer, "tiny")
    ids = tokens.message({"role": "user", "content": "What is my name?"})
    assert tokenizer.decode(ids) == "\n<|im_start|>user\nWhat is my name?<|im_end|>\n<|im_start|>assistant\n"
    assert tokens.end_of_turn == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokens.close_turn([5, tokens.end_of_turn]) == []
    assert tokens.close_turn([5, 6]) == [tokens.end_of_turn]  # a turn cut by its token limit


def test_grown_sequence_keeps_the_engine_ids_and_matches_the_whole_render(tokenizer):
    tokens = TurnTokens(tokenizer, "tiny")
    # The "engine" sampled ids that a re-encoding of the reply's text would never produce:
    # byte tokens one at a time, where BPE would merge them.
    replies = [[tokenizer.convert_tokens_to_ids(c) for c in "Noted."] + [tokens.end_of_turn],
               tokenizer.encode("Your name is Ada.", add_special_tokens=False)]
    grown = tokens.assemble(CONVERSATION, replies)
    opening = tokens.opening(CONVERSATION[:1])
    assert grown[: len(opening)] == opening
    assert grown[len(opening): len(opening) + len(replies[0])] == replies[0]  # kept as sampled
    whole = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(grown) == whole
    # Earlier turns are never re-tokenized: growing by one more message only appends.
    longer = tokens.assemble(CONVERSATION + [{"role": "assistant", "content": "Ok."}], replies + [[7]])
    assert longer[: len(grown)] == grown


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    # Like templates that drop earlier reasoning: every assistant turn but the last is elided.
    rewriting = copy.deepcopy(tokenizer)
    rewriting.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n...<|im_end|>\\n' }}{% else %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="my-model: the chat template"):
        TurnTokens(rewriting, "my-model")
    missing = copy.deepcopy(tokenizer)
    missing.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        TurnTokens(missing, "my-model")
