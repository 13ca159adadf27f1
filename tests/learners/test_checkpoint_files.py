"""Driver-side checkpoint files: atomic step directories, ``latest``, pruning, resolve, export."""

import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

from learners import checkpoint


def _save(root, step, keep_last=2, state=None, payload=None):
    tmp = checkpoint.begin(str(root), step)
    if payload:
        with open(os.path.join(tmp, "payload.txt"), "w") as f:
            f.write(payload)
    return checkpoint.commit(str(root), step, tmp, state if state is not None else {"step": step}, keep_last)


def _steps(root):
    return sorted(d for d in os.listdir(root) if d.startswith("step_"))


def test_step_dir_is_zero_padded(tmp_path):
    assert checkpoint.step_dir(str(tmp_path), 3) == os.path.join(str(tmp_path), "step_000003")
    assert checkpoint.step_dir("ck", 123456) == os.path.join("ck", "step_123456")


def test_begin_creates_an_empty_tmp_dir(tmp_path):
    tmp = checkpoint.begin(str(tmp_path), 3)
    assert tmp == os.path.join(str(tmp_path), "step_000003.tmp")
    assert os.path.isdir(tmp) and os.listdir(tmp) == []


def test_begin_replaces_a_stale_tmp(tmp_path):
    stale = tmp_path / "step_000003.tmp"
    (stale / "optimizer").mkdir(parents=True)
    (stale / "optimizer" / "shard.distcp").write_text("half-written")
    tmp = checkpoint.begin(str(tmp_path), 3)
    assert tmp == str(stale)
    assert os.listdir(tmp) == []


def test_commit_writes_state_and_latest(tmp_path):
    state = {"step": 3, "policy_version": 3, "data": {"epoch": 0, "position": 48}}
    final = _save(tmp_path, 3, state=state, payload="weights")
    assert final == os.path.join(str(tmp_path), "step_000003")
    assert _steps(tmp_path) == ["step_000003"]  # the .tmp was renamed, not copied
    assert not os.path.exists(final + ".tmp")
    with open(os.path.join(final, "state.json")) as f:
        assert json.load(f) == state
    assert checkpoint.read_state(final) == state
    with open(os.path.join(final, "payload.txt")) as f:
        assert f.read() == "weights"
    latest = tmp_path / "latest"
    assert latest.is_symlink()
    # Relative target: the checkpoint directory can be moved as a whole.
    assert os.readlink(latest) == "step_000003"
    assert os.path.realpath(latest) == os.path.realpath(final)
    assert not os.path.lexists(tmp_path / "latest.tmp")


def test_later_commit_moves_latest(tmp_path):
    _save(tmp_path, 3)
    _save(tmp_path, 6, state={"step": 6})
    assert os.readlink(tmp_path / "latest") == "step_000006"
    assert checkpoint.read_state(checkpoint.resolve(str(tmp_path), "latest")) == {"step": 6}


def test_commit_over_an_existing_step_replaces_it(tmp_path):
    _save(tmp_path, 3, state={"step": 3, "try": 1}, payload="old")
    final = _save(tmp_path, 3, state={"step": 3, "try": 2})
    assert checkpoint.read_state(final) == {"step": 3, "try": 2}
    assert not os.path.exists(os.path.join(final, "payload.txt"))


def test_keep_last_prunes_older_steps(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert _steps(tmp_path) == ["step_000003", "step_000004"]
    assert os.readlink(tmp_path / "latest") == "step_000004"


def test_keep_last_one_keeps_the_newest(tmp_path):
    for step in (5, 10, 15):
        final = _save(tmp_path, step, keep_last=1)
        assert _steps(tmp_path) == [os.path.basename(final)]
        assert checkpoint.resolve(str(tmp_path), "latest") == os.path.realpath(final)


def test_prune_ignores_tmp_dirs_and_other_files(tmp_path):
    _save(tmp_path, 1, keep_last=5)
    in_progress = checkpoint.begin(str(tmp_path), 2)
    (tmp_path / "notes.txt").write_text("keep me")
    checkpoint._prune(str(tmp_path), newest=1, keep_last=1)
    assert os.path.isdir(in_progress)  # a save in progress is not the pruner's business
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert _steps(tmp_path) == ["step_000001", "step_000002.tmp"]


def test_resolve_latest_returns_the_real_path(tmp_path):
    final = _save(tmp_path, 3)
    resolved = checkpoint.resolve(str(tmp_path), "latest")
    assert resolved == os.path.realpath(final)
    assert not os.path.islink(resolved) and os.path.basename(resolved) == "step_000003"


def test_resolve_explicit_path(tmp_path):
    final = _save(tmp_path, 3)
    _save(tmp_path, 4)
    assert checkpoint.resolve(str(tmp_path), final) == os.path.realpath(final)


def test_resolve_missing_dir_names_checkpoint_resume(tmp_path):
    missing = str(tmp_path / "step_000042")
    with pytest.raises(ValueError, match=r"checkpoint\.resume") as err:
        checkpoint.resolve(str(tmp_path), missing)
    assert "step_000042" in str(err.value)
    with pytest.raises(ValueError, match=r"checkpoint\.resume='latest'"):
        checkpoint.resolve(str(tmp_path / "empty"), "latest")


def test_incomplete_tmp_is_never_resolved_as_latest(tmp_path):
    # Nothing committed yet: a crashed first save leaves only a .tmp, which is not resumable.
    crashed = checkpoint.begin(str(tmp_path), 1)
    (tmp_path / "step_000001.tmp" / "learner.json").write_text("{}")
    with pytest.raises(ValueError, match=r"checkpoint\.resume"):
        checkpoint.resolve(str(tmp_path), "latest")
    with pytest.raises(ValueError, match=r"checkpoint\.resume"):
        checkpoint.resolve(str(tmp_path), crashed)

    # After a committed step 2, a crash while writing step 3 (even after state.json was
    # written into the .tmp) leaves latest on step 2.
    _save(tmp_path, 2, state={"step": 2})
    tmp = checkpoint.begin(str(tmp_path), 3)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": 3}, f)
    resolved = checkpoint.resolve(str(tmp_path), "latest")
    assert os.path.basename(resolved) == "step_000002"
    assert checkpoint.read_state(resolved) == {"step": 2}


def test_dangling_latest_is_reported(tmp_path):
    _save(tmp_path, 1)
    os.rename(tmp_path / "step_000001", tmp_path / "moved_away")
    with pytest.raises(ValueError, match=r"checkpoint\.resume='latest'"):
        checkpoint.resolve(str(tmp_path), "latest")


def test_commit_below_existing_steps_keeps_latest_valid(tmp_path):
    # A previous run left steps 20 and 30; a fresh run in the same dir saves step 10.
    _save(tmp_path, 20, keep_last=2)
    _save(tmp_path, 30, keep_last=2)
    final = _save(tmp_path, 10, keep_last=2)
    assert os.path.isdir(final)
    assert checkpoint.resolve(str(tmp_path), "latest") == os.path.realpath(final)


# ----------------------------------------------------------------------------- export_hf
def _tiny_config(tie=True):
    return transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )


def test_export_hf_tied_round_trip(tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_config(tie=True))
    state = model.state_dict()
    assert "lm_head.weight" in state
    out = str(tmp_path / "policy")
    checkpoint.export_hf(state, model.config, None, out)

    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert os.path.isfile(os.path.join(out, "config.json"))
    stored = load_file(os.path.join(out, "model.safetensors"))
    assert "lm_head.weight" not in stored
    assert set(stored) == set(state) - {"lm_head.weight"}
    for key, value in stored.items():
        assert torch.equal(value, state[key]), key

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.tie_word_embeddings
    assert loaded.config.num_hidden_layers == 1 and loaded.config.hidden_size == 16
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key
    assert torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_export_hf_untied_keeps_lm_head(tmp_path):
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_config(tie=False))
    state = model.state_dict()
    out = str(tmp_path / "critic")
    checkpoint.export_hf(state, model.config, None, out)
    stored = load_file(os.path.join(out, "model.safetensors"))
    assert set(stored) == set(state)
    assert torch.equal(stored["lm_head.weight"], state["lm_head.weight"])
    assert not torch.equal(stored["lm_head.weight"], stored["model.embed_tokens.weight"])


def test_export_writes_generation_config(tmp_path):
    config = _tiny_config()
    model = transformers.Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = 3
    state = {k: v for k, v in model.state_dict().items()}
    checkpoint.export_hf(state, config, None, str(tmp_path / "out"), generation_config=model.generation_config)
    loaded = transformers.GenerationConfig.from_pretrained(str(tmp_path / "out"))
    assert loaded.eos_token_id == 3
