"""Each family's own chat template through what rayppo builds from it: conversation-SFT masks,
the RL prompt, token-in/token-out multi-turn trajectories, and the errors of a template that
cannot express a conversation. Real tokenizers (Qwen3, Llama-3.1, Gemma-3), no Ray."""

from __future__ import annotations

import json
import os

import pytest

from tests.families.conftest import FAMILY_NAMES

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What is my name?"},
    {"role": "assistant", "content": "Your name is Ada."},
]
END = {"qwen3": "<|im_end|>", "llama3_1": "<|eot_id|>", "gemma3": "<end_of_turn>"}


def masked_turns(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The masked stretches of ``ids``, decoded one by one."""
    turns, current = [], []
    for token, flag in zip(ids + [None], mask + [0]):
        if flag:
            current.append(token)
        elif current:
            turns.append(tokenizer.decode(current))
            current = []
    return turns


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_mask_is_every_reply_with_its_end_marker_and_the_prompt_is_the_rl_prompt(family, family_tokenizers):
    from pipeline.data import encode_prompts
    from pipeline.data.conversations import encode_conversation
    from pipeline.data.rows import PromptRow

    tokenizer = family_tokenizers(family)
    ids, mask = encode_conversation(tokenizer, CONVERSATION)
    # Qwen3 writes an empty reasoning block into the last assistant turn only: the model generates
    # it after the generation prompt, so it belongs to that reply.
    last = "<think>\n\n</think>\n\nYour name is Ada." if family == "qwen3" else "Your name is Ada."
    assert masked_turns(tokenizer, ids, mask) == ["Noted." + END[family], last + END[family]]
    # The whole sequence is the template's own rendering, token for token ...
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(ids) == full
    # ... and what precedes the first reply is exactly the prompt the engines are given in RL.
    row = PromptRow(messages=CONVERSATION[:2], answer=None, source="t")
    prompt = encode_prompts(tokenizer, [row], 256)[0]
    assert ids[: len(prompt)] == prompt and mask[: len(prompt)] == [0] * len(prompt) and mask[len(prompt)] == 1


def test_qwen3_renders_earlier_turns_otherwise_and_the_masks_still_hold(family_tokenizers):
    from pipeline.data.conversations import encode_conversation

    tokenizer = family_tokenizers("qwen3")
    reasoned = [
        {"role": "user", "content": "Compute 2+3."},
        {"role": "assistant", "content": "<think>\n2 plus 3\n</think>\n\n5"},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "8"},
    ]
    first = tokenizer.apply_chat_template(reasoned[:2], tokenize=False)
    whole = tokenizer.apply_chat_template(reasoned, tokenize=False)
    # Not append-only: as the last turn the first reply keeps its reasoning, as an earlier turn
    # the template drops it.
    assert "2 plus 3" in first and "2 plus 3" not in whole and not whole.startswith(first)
    ids, mask = encode_conversation(tokenizer, reasoned)
    assert masked_turns(tokenizer, ids, mask) == ["5<|im_end|>", "<think>\n\n</think>\n\n8<|im_end|>"]
    assert tokenizer.decode(ids) == whole
    # Trained alone, the first turn is masked with its reasoning, as the model generates it.
    ids, mask = encode_conversation(tokenizer, reasoned[:2])
    assert masked_turns(tokenizer, ids, mask) == ["<think>\n2 plus 3\n</think>\n\n5<|im_end|>"]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_trajectory_grown_turn_by_turn_is_the_full_render(family, family_tokenizers):
    from rollout_workers.turn_tokens import TurnTokens

    tokenizer = family_tokenizers(family)
    tokens = TurnTokens(tokenizer, family)
    end = tokenizer.convert_tokens_to_ids(END[family])
    assert tokens.end_of_turn == end
    conversation = CONVERSATION + [{"role": "user", "content": "Thanks, and 2+2?"}]
    # The engine's replies: the reply's ids, then the end-of-turn token it stopped on.
    replies = [tokenizer.encode(m["content"], add_special_tokens=False) + [end] for m in conversation if m["role"] == "assistant"]
    grown = tokens.assemble(conversation, replies)
    whole = tokenizer.encode(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    assert grown == whole, (tokenizer.decode(grown), tokenizer.decode(whole))
    # What is appended after a reply is the template's own text between the turns.
    between = tokenizer.decode(tokens.message(conversation[-1]))
    assert between in tokenizer.decode(whole) and "Thanks, and 2+2?" in between


def test_gemma3_cannot_place_a_system_message_after_the_first_and_says_so(family_tokenizers):
    from pipeline.data.templates import check_chat_template

    tokenizer = family_tokenizers("gemma3")
    # A leading system message is folded into the first user turn ...
    check_chat_template(tokenizer, "model.path='gemma'", (CONVERSATION,))
    assert "Be brief.\n\nMy name is Ada." in tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    # ... any other is refused, with the model and the template's own reason.
    late = CONVERSATION[1:3] + [SYSTEM]
    with pytest.raises(ValueError, match=r"model.path='gemma'.*user/assistant/system.*roles must alternate"):
        check_chat_template(tokenizer, "model.path='gemma'", (late,))


def test_a_template_without_a_generation_prompt_is_refused(family_tokenizers, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.data.templates import check_chat_template

    tokenizer = AutoTokenizer.from_pretrained(family_tokenizers("llama3_1").name_or_path)
    tokenizer.chat_template = tokenizer.chat_template.split("{% if add_generation_prompt %}")[0]
    with pytest.raises(ValueError, match="no generation prompt"):
        check_chat_template(tokenizer, "model.path='llama'")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_init_model_builds_the_family_architecture_at_its_full_vocabulary(family, family_models, family_tokenizers):
    from transformers import AutoTokenizer

    from pipeline.infra.tokenizer_families import FAMILIES

    path = family_models(family)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    expected = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM"}
    assert config["architectures"] == [expected[FAMILIES[family].architecture]]
    fetched = family_tokenizers(family)
    saved = AutoTokenizer.from_pretrained(path)
    assert config["vocab_size"] == len(fetched) > 128_000
    assert saved.chat_template == fetched.chat_template
    assert saved.encode("Compute 47+38.") == fetched.encode("Compute 47+38.")
    assert config["eos_token_id"] == fetched.convert_tokens_to_ids(END[family])


def test_an_unfetched_family_names_the_make_target(monkeypatch, tmp_path):
    from pipeline.config import load_config
    from pipeline.stages.init_model import init_model

    monkeypatch.setenv("RAYPPO_TOKENIZERS", str(tmp_path / "empty"))
    cfg = load_config(None, [f"init.output_dir={tmp_path}/m", "init.tokenizer_path=qwen3"])
    with pytest.raises(ValueError, match=r"init.tokenizer_path='qwen3'.*make tokenizers"):
        init_model(cfg.init, cfg.data)
    assert not os.path.exists(tmp_path / "m")


def test_a_reasoning_block_is_not_part_of_the_answer():
    from pipeline import tasks

    # What a Qwen3-family policy replies after its generation prompt, thinking or not.
    assert tasks.verify("arithmetic", "<think>\n\n</think>\n\n85", "85", "Compute 47+38.") == 1.0
    assert tasks.verify("arithmetic", "<think>\n47 plus 38 is 85\n</think>\n\n85", "85", "Compute 47+38.") == 1.0
    assert tasks.verify("arithmetic", "<think>85</think>\n\n84", "85", "Compute 47+38.") == 0.0
    assert tasks.verify("arithmetic", "85", "85", "Compute 47+38.") == 1.0
