import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import tasks
from pipeline.config import DataConfig, InitModelConfig
from pipeline.stages import init_model


def _texts(n=300, task="arithmetic"):
    return [
        init_model.render_chat(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}]
        )
        for r in tasks.generate_rows(task, n, 0)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return init_model.train_tokenizer(_texts(), 320)


def test_presets_have_the_documented_shapes():
    assert list(init_model.PRESETS) == ["tiny", "debug", "small", "0.5b"]
    half = init_model.PRESETS["0.5b"]
    assert (half["num_hidden_layers"], half["hidden_size"], half["num_attention_heads"]) == (24, 896, 14)
    assert (half["num_key_value_heads"], half["intermediate_size"]) == (2, 4864)
    for sizes in init_model.PRESETS.values():
        assert sizes["hidden_size"] % sizes["num_attention_heads"] == 0
        assert sizes["num_attention_heads"] % sizes["num_key_value_heads"] == 0
        assert sizes["tie_word_embeddings"] and sizes["max_position_embeddings"] == 512


def test_tokenizer_digits_specials_and_round_trip(tokenizer):
    assert len(tokenizer.encode("123")) == 3
    assert len(tokenizer.encode("9081726354")) == 10
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer.encode(token)) == 1
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in ["Compute 47+38.", "Use 3 5 7 to make 22.", "héllo  wörld\n\n\tx 1.5 ", "日本語 😀"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    # Merges are learned from the task text, so its common words become single tokens.
    assert len(tokenizer.encode("Compute")) == 1


def test_chat_template_is_chatml(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Compute 1+2."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n"
    assert text == expected == init_model.render_chat(messages, add_generation_prompt=True)


def test_tokenizer_vocab_size_validation():
    with pytest.raises(ValueError, match=r"init\.vocab_size=100"):
        init_model.train_tokenizer(["abc"], 100)


def test_build_model_validation_and_seeding(tokenizer):
    with pytest.raises(ValueError, match=r"init\.architecture='gpt2'"):
        init_model.build_model("gpt2", "tiny", tokenizer, 0)
    with pytest.raises(ValueError, match=r"init\.preset='huge'"):
        init_model.build_model("qwen2", "huge", tokenizer, 0)
    a = init_model.build_model("llama", "tiny", tokenizer, seed=1)
    b = init_model.build_model("llama", "tiny", tokenizer, seed=1)
    c = init_model.build_model("llama", "tiny", tokenizer, seed=2)
    assert type(a).__name__ == "LlamaForCausalLM"
    assert a.config.vocab_size == len(tokenizer) and a.dtype == torch.float32
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()
    assert a.generation_config.eos_token_id == tokenizer.eos_token_id
    assert a.generation_config.pad_token_id == tokenizer.pad_token_id
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    deeper = init_model.build_model("qwen2", "tiny", tokenizer, seed=1, num_layers=3)
    assert deeper.config.num_hidden_layers == 3 and deeper.config.hidden_size == a.config.hidden_size
    with pytest.raises(ValueError, match=r"init\.num_layers=0"):
        init_model.build_model("qwen2", "tiny", tokenizer, 0, num_layers=0)


def test_init_model_saves_loadable_model(tmp_path):
    out = tmp_path / "base"
    stale = tmp_path / "base.tmp"
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    init_cfg = InitModelConfig(output_dir=str(out), preset="tiny", vocab_size=400, corpus_size=500, seed=3)
    data_cfg = DataConfig(task="arithmetic", seed=0)

    path = init_model.init_model(init_cfg, data_cfg)
    assert path == str(out)
    assert not stale.exists()
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(
        os.listdir(path)
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert config["tie_word_embeddings"] is True and config["num_hidden_layers"] == 2

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    assert len(tokenizer_ids := tok.encode("123")) == 3, tokenizer_ids
    # The reloaded tokenizer (whatever class transformers picks) must tokenize like the trained one.
    trained = init_model.train_tokenizer(init_model._corpus(init_cfg, data_cfg), 400)
    for text in _texts(50) + _texts(50, "countdown") + ["odd  spacing\n\nhere 12"]:
        assert tok.encode(text) == trained.encode(text)

    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Compute 4+5."}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    out_ids = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out_ids.shape[0] == 1 and ids == out_ids[0, : len(ids)].tolist()
    assert 0 < out_ids.shape[1] - len(ids) <= 4

    mtime = os.path.getmtime(out / "model.safetensors")
    assert init_model.ensure_model(init_cfg, data_cfg) == path
    assert os.path.getmtime(out / "model.safetensors") == mtime

    # Rebuilding over an existing directory replaces it whole.
    (out / "leftover.txt").write_text("x")
    init_model.init_model(init_cfg, data_cfg)
    assert not (out / "leftover.txt").exists() and (out / "config.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["base"]


def test_ensure_model_builds_from_prompt_files(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in tasks.generate_rows("countdown", 100, 0)))
    init_cfg = InitModelConfig(output_dir=str(tmp_path / "m"), architecture="llama", vocab_size=300, corpus_size=50)
    data_cfg = DataConfig(task=None, train_files=[str(rows)])
    path = init_model.ensure_model(init_cfg, data_cfg)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert AutoTokenizer.from_pretrained(path).decode([]) == ""

    with pytest.raises(ValueError, match=r"data\.train_files is empty"):
        init_model.init_model(InitModelConfig(output_dir=str(tmp_path / "x")), DataConfig(task=None))
    with pytest.raises(ValueError, match=r"init\.corpus_size=0"):
        init_model.init_model(InitModelConfig(output_dir=str(tmp_path / "x"), corpus_size=0), DataConfig())
