"""Conversation rows and their assistant masks under several chat templates."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from pipeline.data.conversations import check_conversation, conversation_from_row, encode_conversation, load_conversations

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Compute 2+3."},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4+4?"},
    {"role": "assistant", "content": "8"},
]

# Llama-3 style: a BOS at the start, headers per turn, <|eot_id|> ends every turn (here the
# tokenizer's own end-of-turn marker is an added token).
LLAMA3_TEMPLATE = (
    "{{ '<|endoftext|>' }}{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n\\n' }}{% endif %}"
)
# Not prefix-stable: earlier assistant turns lose their reasoning, the last keeps it (as the
# Qwen3 / DeepSeek-R1 templates do), so rendering a prefix does not give a prefix.
REASONING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n' + m['content'].split('</think>')[-1] | trim + '<|im_end|>\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n<think>\\n</think>\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GENERATION_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Not prefix-stable, and rewrites earlier replies (upper-cases them): no way to find their tokens.
OPAQUE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n' + m['content'] | upper + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_model):
    """A fresh copy per test: tests replace its chat template."""
    return AutoTokenizer.from_pretrained(tiny_model)


def _masked_text(tokenizer, ids, mask) -> list[str]:
    """The masked tokens decoded, one string per contiguous run."""
    runs, current = [], []
    for token, flag in zip(ids, mask):
        if flag:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_chatml_mask_covers_every_assistant_turn_and_its_end_token(tokenizer):
    ids, mask = encode_conversation(tokenizer, TWO_TURNS)
    assert len(ids) == len(mask)
    assert _masked_text(tokenizer, ids, mask) == ["5<|im_end|>", "8<|im_end|>"]
    # Rendering agrees with the template's own tokenization.
    expected = tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)
    assert ids == list(expected)


def test_prompt_part_matches_the_rl_prompt_encoding(tokenizer):
    """The tokens before the first reply are what the RL stage feeds the engine."""
    ids, mask = encode_conversation(tokenizer, TWO_TURNS[:3])
    prompt = list(tokenizer.apply_chat_template(TWO_TURNS[:2], add_generation_prompt=True, tokenize=True, return_dict=False))
    assert ids[: len(prompt)] == prompt
    assert mask[: len(prompt)] == [0] * len(prompt) and mask[len(prompt)] == 1


def test_other_end_of_turn_marker_and_bos(tokenizer):
    tokenizer.add_tokens(["<|eot_id|>"], special_tokens=True)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    ids, mask = encode_conversation(tokenizer, TWO_TURNS)
    assert _masked_text(tokenizer, ids, mask) == ["5<|eot_id|>", "8<|eot_id|>"]
    assert mask[0] == 0 and tokenizer.decode(ids[:1]) == "<|endoftext|>"


def test_template_that_is_not_prefix_stable(tokenizer):
    tokenizer.chat_template = REASONING_TEMPLATE
    messages = [
        {"role": "user", "content": "Compute 2+3."},
        {"role": "assistant", "content": "<think>2 and 3</think>5"},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "8"},
    ]
    ids, mask = encode_conversation(tokenizer, messages)
    # The first reply is rendered without its reasoning; both replies are found and masked. The
    # last turn's reply starts right after the generation prompt: the empty reasoning block the
    # template writes there is what the model generates after that prompt, so it is learned too.
    assert _masked_text(tokenizer, ids, mask) == ["5<|im_end|>", "<think>\n</think>\n8<|im_end|>"]


def test_generation_blocks_are_used_when_present(tokenizer):
    tokenizer.chat_template = GENERATION_TEMPLATE
    ids, mask = encode_conversation(tokenizer, TWO_TURNS)
    assert _masked_text(tokenizer, ids, mask) == ["5<|im_end|>", "8<|im_end|>"]


def test_template_that_cannot_be_masked_names_the_model(tokenizer):
    tokenizer.chat_template = OPAQUE_TEMPLATE
    worded = [dict(m, content={"5": "five", "8": "eight"}.get(m["content"], m["content"])) for m in TWO_TURNS]
    with pytest.raises(ValueError, match=rf"chat template of '{tokenizer.name_or_path}' cannot be masked.*messages\[2\]"):
        encode_conversation(tokenizer, worded)


def test_missing_template_is_an_error(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        encode_conversation(tokenizer, TWO_TURNS)


def test_single_turn_rows_become_user_assistant():
    assert conversation_from_row({"prompt": "Hi", "answer": "Hello"}, "f: row 1") == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}]
    assert conversation_from_row({"messages": messages, "answer": "Hello"}, "f: row 1")[-1] == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize(
    "row, match",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, r"f: row 3: field 'messages': has no assistant turn"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, r"field 'messages\[0\]': a conversation must open"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, r"field 'messages\[1\]': role 'bot'"),
        ({"messages": [{"role": "user", "content": 3}]}, r"field 'messages\[0\]': content must be a string"),
        ({"messages": "hello"}, r"field 'messages': must be a non-empty list"),
        ({"prompt": "hi"}, r"field 'answer': missing"),
        ({"prompt": "hi", "answer": 5}, r"field 'answer': must be a string"),
        ({"text": "hi"}, r"missing field 'messages'"),
        ("hello", r"expected an object"),
    ],
)
def test_bad_rows_name_the_row_and_field(row, match):
    with pytest.raises(ValueError, match=match):
        conversation_from_row(row, "f: row 3")


def test_load_conversations_reports_file_and_row(tmp_path):
    path = tmp_path / "chats.jsonl"
    good = {"messages": TWO_TURNS}
    bad = {"messages": [{"role": "user", "content": "no reply"}]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=rf"{path}: row 3: field 'messages': has no assistant turn"):
        load_conversations(str(path))
    path.write_text(json.dumps(good) + "\n")
    (conv,) = load_conversations(str(path))
    assert conv.messages == check_conversation(TWO_TURNS, "x") and conv.source == f"{path}:row 1"


def test_sft_stage_rejects_bad_rows_before_ray_starts(tiny_model, tmp_path, refuse_ray_start):
    from pipeline.config import load_config
    from pipeline.stages.sft import run_sft

    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": TWO_TURNS}) + "\n" + json.dumps({"messages": [{"role": "user", "content": 1}]}) + "\n")
    cfg = load_config(None, [f"sft.base_path={tiny_model}", f"sft.train_files=[{path}]", f"sft.output_dir={tmp_path / 'sft'}"])
    with pytest.raises(ValueError, match=rf"{path}: row 2: field 'messages\[0\]': content must be a string"):
        run_sft(cfg)
    assert refuse_ray_start == [] and not (tmp_path / "sft").exists()


def test_sft_examples_from_prompt_rows_keep_the_single_turn_path(tiny_model):
    from pipeline.config import load_config
    from pipeline.stages.sft import prepare

    cfg = load_config(None, [f"sft.base_path={tiny_model}", "data.num_train=20", "sft.num_examples=5"])
    examples, eval_examples, pad_id = prepare(cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert len(examples) == 5 and eval_examples == []
    ids, mask = examples[0]
    # Exactly the answer and its end-of-turn token carry loss, as before conversations existed.
    answer = [t for t, m in zip(ids, mask) if m]
    assert tokenizer.decode(answer).endswith("<|im_end|>") and tokenizer.decode(answer[:-1]).isdigit()
