"""``rayppo chat``'s app on each family's model (transformers engine): the next reply is
generated from the whole history as the family's template renders it, system prompt included
(Gemma-3 folds it into the first user turn)."""

from __future__ import annotations

import io

import pytest
import torch

from tests.families.conftest import FAMILY_NAMES


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_chat_replies_come_from_the_whole_history_in_the_family_template(family, family_models):
    from pipeline.infra.terminal import TerminalChat
    from pipeline.stages.chat import ChatApp
    from rollout_workers.chat_engine import ChatSampling, HFChatEngine

    engine = HFChatEngine(family_models(family))
    console = TerminalChat(stdin=io.StringIO("My name is Ada.\nWhat is my name?\n"), stdout=io.StringIO())
    app = ChatApp(engine, console, ChatSampling(temperature=0.0, max_tokens=5), system="Be brief.")
    app.run()
    messages = app.conversation.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    ids = engine.encode(messages[:4])
    rendered = engine.tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)
    assert engine.tokenizer.decode(ids) == rendered and "Be brief." in rendered
    prompt = torch.tensor([ids])
    with torch.no_grad():
        greedy = engine.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                                       pad_token_id=engine.tokenizer.pad_token_id or engine.tokenizer.eos_token_id)
    expected = engine.tokenizer.decode(greedy[0, prompt.shape[1]:], skip_special_tokens=True)
    assert messages[4]["content"] == expected
