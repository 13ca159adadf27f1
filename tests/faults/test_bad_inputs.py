"""Bad inputs fail before any heavy work, with the culprit named, and lose nothing saved.

Every case runs the real CLI (``rayppo train`` / ``rm`` / ``sft`` / ``sweep``) on a config
whose ``checkpoint.dir`` holds an existing checkpoint, and checks: exit status 2, a message on
stderr naming the culprit (config field, file and row, reward source, environment class, model
path), no Ray started, and the checkpoint directory byte-for-byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from pipeline import cli


@dataclass
class Case:
    id: str
    culprits: tuple[str, ...]
    """Substrings the error message must contain (what names the culprit)."""
    overrides: tuple[str, ...] = ()
    prepare: Optional[Callable[[Path, str], list[str]]] = None
    """``prepare(tmp, tiny_model)`` writes files for the case and returns more overrides."""
    command: str = "train"
    config: Optional[Callable[[dict], object]] = None
    """Edits the base config mapping (or returns raw YAML text to write instead)."""


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _jsonl(path: Path, rows: list) -> str:
    return _write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _model_copy(tmp: Path, tiny_model: str, name: str = "model") -> Path:
    out = tmp / name
    shutil.copytree(tiny_model, out)
    return out


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _corrupt(tmp: Path, tiny_model: str, name: str, field: str = "model.path") -> list[str]:
    """A copy of the model with file ``name`` cut short (not valid JSON)."""
    model = _model_copy(tmp, tiny_model)
    (model / name).write_text("{broken")
    return [f"{field}={model}"]


def _dangling_latest(tmp: Path, tiny_model: str) -> list[str]:
    """A checkpoint directory whose ``latest`` points at a step that is not there."""
    root = _dir(tmp / "ck")
    os.symlink("step_000009", root / "latest")
    return [f"checkpoint.dir={root}", "checkpoint.resume=auto"]


def _broken_config_json(text: str):
    def prepare(tmp: Path, tiny_model: str) -> list[str]:
        model = _model_copy(tmp, tiny_model)
        (model / "config.json").write_text(text)
        return [f"model.path={model}"]
    return prepare


def _data_files(train_rows: list, name: str = "train.jsonl"):
    def prepare(tmp: Path, tiny_model: str) -> list[str]:
        good = _jsonl(tmp / "eval.jsonl", [{"prompt": "Compute 1+1.", "answer": "2"}])
        bad = _jsonl(tmp / name, train_rows)
        return ["data.task=null", f"data.train_files=[{bad}]", f"data.eval_files=[{good}]", _FILE_REWARD]
    return prepare


def _pairs(rows: list):
    def prepare(tmp: Path, tiny_model: str) -> list[str]:
        path = _jsonl(tmp / "pairs.jsonl", rows)
        return [f"rm.base_path={tiny_model}", f"rm.train_files=[{path}]", f"rm.output_dir={tmp / 'rm'}"]
    return prepare


def _file_at(overrides_for: Callable[[str], list[str]]):
    """A plain file where a directory is expected."""
    def prepare(tmp: Path, tiny_model: str) -> list[str]:
        return overrides_for(_write(tmp / "a-file", "not a directory\n"))
    return prepare


def _module(name: str, source: str):
    """An importable module in the working directory (the run's code), removed afterwards."""
    def prepare(tmp: Path, tiny_model: str) -> list[str]:
        _write(tmp / "code" / f"{name}.py", source)
        return []
    return prepare


_FILE_REWARD = "reward.function=tests.integration.reward_fns:digit_fraction"  # files have no built-in verifier
_GOOD_PAIR = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}

CASES = [
    # ---------------------------------------------------------------- configs
    Case("unknown-key", ("learner.lrr", "did you mean 'learner.lr'?"), ("learner.lrr=1e-4",)),
    Case("wrong-type", ("learner.lr: expected float, got 'fast'",), ("learner.lr=fast",)),
    Case("bound", ("rollout.temperature",), ("rollout.temperature=0",)),
    Case("enum", ("algorithm.advantage", "grpo"), ("algorithm.advantage=ppo",)),
    Case("divisibility", ("learner.num_ranks",), ("learner.num_ranks=3",)),
    Case("group-size", ("rollout.n_samples", "algorithm.advantage='grpo'"), ("rollout.n_samples=1",)),
    Case("placement-timeout", ("resources.placement_timeout_s",), ("resources.placement_timeout_s=0",)),
    Case("max-failures", ("resources.max_failures",), ("resources.max_failures=-2",)),
    Case("engine-timeout", ("resources.engine_timeout_s",), ("resources.engine_timeout_s=-1",)),
    Case("keep-last", ("checkpoint.keep_last",), ("checkpoint.keep_last=0",)),
    Case("staleness", ("rollout.max_staleness",), ("rollout.max_staleness=2",)),
    Case("section-scalar", ("learner: expected a mapping",), ("learner=5",)),
    Case("malformed-override", ("malformed override", "learner.lr"), ("learner.lr",)),
    Case("no-prompts", ("data.train_files",), ("data.task=null",)),
    Case("colocated-pool", ("resources.learner_node_resources",), ("resources.learner_node_resources={pool: 0.01}",)),
    Case("invalid-yaml", ("invalid YAML",), config=lambda raw: "learner: [unclosed\n"),
    Case("yaml-not-mapping", ("top level must be a mapping",), config=lambda raw: "- a\n- b\n"),
    Case("sweep-space", ("tune.search_space",), ("tune.search_space={learner.lrr: [1, 2]}",), command="sweep"),
    # ------------------------------------------------------------ model paths
    Case("model-missing", ("model.path", "does not exist"), prepare=lambda tmp, m: [f"model.path={tmp / 'nope'}"]),
    Case("model-no-config", ("model.path", "has no config.json"), prepare=lambda tmp, m: [f"model.path={_dir(tmp / 'empty')}"]),
    Case("config-json-invalid", ("model.path", "config.json is not valid JSON", "line 1"),
         prepare=_broken_config_json('{"model_type": "qwen2",')),
    Case("config-json-list", ("model.path", "must hold a JSON object"), prepare=_broken_config_json("[1, 2]")),
    Case("config-json-no-type", ("model.path", "no 'model_type'"), prepare=_broken_config_json('{"hidden_size": 8}')),
    Case("model-is-file", ("model.path", "is a file"), prepare=_file_at(lambda f: [f"model.path={f}"])),
    Case("context-too-short", ("rollout.max_tokens", "100000", "context of model.path"), ("rollout.max_tokens=100000",)),
    Case("tokenizer-broken", ("model.path", "tokenizer"), prepare=lambda tmp, m: _corrupt(tmp, m, "tokenizer.json")),
    Case("critic-path", ("model.critic_path", "does not exist"),
         ("algorithm.advantage=gae",), prepare=lambda tmp, m: [f"model.critic_path={tmp / 'no-critic'}"]),
    Case("sft-base-invalid", ("sft.base_path", "not valid JSON"), command="sft",
         prepare=lambda tmp, m: _corrupt(tmp, m, "config.json", field="sft.base_path")),
    Case("sweep-model-invalid", ("model.path", "config.json is not valid JSON"), command="sweep",
         overrides=("tune.search_space={learner.lr: {loguniform: [1.0e-5, 1.0e-3]}}",),
         prepare=_broken_config_json("{")),
    Case("rm-base-missing", ("rm.base_path", "does not exist"), command="rm",
         prepare=lambda tmp, m: [f"rm.base_path={tmp / 'no-rm-base'}"]),
    # ----------------------------------------------------- checkpoints, outputs
    Case("checkpoint-dir-is-file", ("checkpoint.dir", "is an existing file"),
         prepare=_file_at(lambda f: [f"checkpoint.dir={f}"])),
    Case("checkpoint-dir-under-file", ("checkpoint.dir", "cannot be created"),
         prepare=_file_at(lambda f: [f"checkpoint.dir={f}/checkpoints"])),
    Case("logging-dir-is-file", ("logging.dir", "is an existing file"), prepare=_file_at(lambda f: [f"logging.dir={f}"])),
    Case("export-dir-is-file", ("checkpoint.export_dir",), prepare=_file_at(lambda f: [f"checkpoint.export_dir={f}"])),
    Case("storage-path-is-file", ("storage_path",), prepare=_file_at(lambda f: [f"storage_path={f}"])),
    Case("resume-nothing", ("checkpoint.resume='latest'", "no complete checkpoint"),
         prepare=lambda tmp, m: [f"checkpoint.dir={tmp / 'fresh'}", "checkpoint.resume=latest"]),
    Case("resume-missing-path", ("checkpoint.resume", "no complete checkpoint"),
         prepare=lambda tmp, m: [f"checkpoint.resume={tmp / 'gone' / 'step_000003'}"]),
    Case("resume-auto-dangling", ("checkpoint.resume='auto'", "step_000009"), prepare=_dangling_latest),
    # --------------------------------------------------------------- data rows
    Case("train-file-missing", ("does not exist", "missing.jsonl"), prepare=lambda tmp, m: [
        "data.task=null", f"data.train_files=[{tmp / 'missing.jsonl'}]", _FILE_REWARD,
        f"data.eval_files=[{_jsonl(tmp / 'eval.jsonl', [{'prompt': 'x'}])}]"]),
    Case("row-invalid-json", ("train.jsonl: row 2", "invalid JSON"),
         prepare=_data_files([{"prompt": "Compute 1+2."}, '{"prompt": "Compute'])),
    Case("row-no-prompt", ("train.jsonl: row 1", "missing 'prompt' or 'messages'"),
         prepare=_data_files([{"question": "Compute 1+2."}])),
    Case("row-bad-role", ("train.jsonl: row 1", "role 'robot'"),
         prepare=_data_files([{"messages": [{"role": "robot", "content": "hi"}]}])),
    Case("row-ends-with-assistant", ("train.jsonl: row 1", "must end with a 'user' message"),
         prepare=_data_files([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])),
    Case("row-answer-type", ("train.jsonl: row 1", "'answer'"), prepare=_data_files([{"prompt": "hi", "answer": [1]}])),
    Case("row-too-long", ("train.jsonl", "row 1", "data.max_prompt_tokens=4"),
         ("data.max_prompt_tokens=4",), prepare=_data_files([{"prompt": "Compute 12345 + 67890 please, carefully."}])),
    # -------------------------------------------------------- preference pairs
    Case("pair-missing-rejected", ("pairs.jsonl: row 2", "'rejected'", "missing"), command="rm",
         prepare=_pairs([_GOOD_PAIR, {"prompt": "hi", "chosen": "hello"}])),
    Case("pair-bad-role", ("pairs.jsonl: row 1", "'chosen[0]'", "role"), command="rm",
         prepare=_pairs([{"prompt": "hi", "chosen": [{"role": "robot", "content": "x"}], "rejected": "no"}])),
    Case("pair-bad-margin", ("pairs.jsonl: row 1", "'margin'", "finite"), command="rm",
         prepare=_pairs([{**_GOOD_PAIR, "margin": "big"}])),
    Case("pair-not-object", ("pairs.jsonl: row 1", "expected an object"), command="rm", prepare=_pairs([[1, 2]])),
    # ------------------------------------------------------------ environments
    Case("env-import", ("env.class", "no_such_module"), ("env.class=no_such_module:Env",)),
    Case("env-not-class", ("env.class", "not a class"), ("env.class=os.path:join",)),
    Case("env-missing-step", ("env.class", "'step'"), ("env.class=bad_env_mod:NoStep",),
         prepare=_module("bad_env_mod", "class NoStep:\n    def reset(self, row, seed):\n        return []\n")),
    # ----------------------------------------------------------- reward sources
    Case("reward-kind", ("reward.sources[0].kind", "judgee", "did you mean 'judge'"),
         ("reward.sources=[{kind: judgee}]",)),
    Case("reward-http-url", ("reward.sources[0].url",), ("reward.sources=[{kind: http, url: 'ftp://x'}]",)),
    Case("reward-model-path", ("reward.sources[0].path", "rm-model"), prepare=lambda tmp, m: [
        f"reward.sources=[{{kind: model, path: {tmp / 'rm-model'}}}]"]),
    Case("reward-duplicate-name", ("reward.sources[1].name", "same name"),
         ("reward.sources=[{kind: similarity, name: a}, {kind: similarity, name: a}]",)),
    Case("reward-function-import", ("reward.function", "no_such_rewards"), ("reward.function=no_such_rewards:score",)),
    Case("reward-weights-zero", ("every source has weight 0",), ("reward.sources=[{kind: similarity, weight: 0}]",)),
]


def _tree_digest(root: Path) -> str:
    """Every path, symlink target and file byte under ``root``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(b"->" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def existing_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """A checkpoint directory as a run leaves it: ``step_000001/`` (policy, state) and ``latest``."""
    root = tmp_path_factory.mktemp("existing") / "checkpoints"
    step = root / "step_000001"
    shutil.copytree(tiny_model, step / "policy")
    (step / "state.json").write_text(json.dumps({"step": 1, "policy_version": 1, "data": {}, "history": {}}))
    os.symlink("step_000001", root / "latest")
    return root


def _base_config(tiny_model: str, tmp: Path, checkpoints: Path) -> dict:
    return {
        "run_name": "bad-inputs", "total_steps": 2, "prompts_per_step": 4, "eval_every": 0,
        "model": {"path": tiny_model},
        "data": {"task": "arithmetic", "num_train": 64, "num_eval": 8},
        "rollout": {"n_samples": 4, "max_tokens": 6},
        "learner": {"num_ranks": 2},
        "sft": {"base_path": tiny_model, "output_dir": str(tmp / "sft"), "num_workers": 1, "batch_size": 2},
        "rm": {"num_workers": 1, "batch_size": 2},
        "checkpoint": {"dir": str(checkpoints), "every_steps": 0, "export_dir": str(tmp / "policy")},
        "logging": {"dir": str(tmp / "logs"), "wandb_mode": "disabled", "progress_bar": False},
        "storage_path": None,
    }


def _run_case(case: Case, tiny_model: str, tmp: Path, checkpoints: Path, capsys) -> str:
    raw = _base_config(tiny_model, tmp, checkpoints)
    edited = case.config(raw) if case.config else None
    config_path = tmp / "run.yaml"
    config_path.write_text(edited if isinstance(edited, str) else yaml.safe_dump(raw))
    extra = case.prepare(tmp, tiny_model) if case.prepare else []
    capsys.readouterr()
    code = cli.main([case.command, str(config_path), *case.overrides, *extra])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr:\n{err}"
    return err


def test_the_base_config_passes_every_check(tiny_model, tmp_path, existing_checkpoint, refuse_ray_start):
    """The control: without a defect, the checks that the cases trip all pass."""
    from pipeline.config import load_config
    from pipeline.stages.train import Trainer

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_base_config(tiny_model, tmp_path, existing_checkpoint)))
    trainer = Trainer(load_config(path))
    assert len(trainer.train_ids) == 64 and trainer.resume_dir is None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_before_heavy_work_naming_the_culprit(case, tiny_model, tmp_path, existing_checkpoint,
                                                               capsys, monkeypatch, refuse_ray_start):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    before = _tree_digest(existing_checkpoint)
    err = _run_case(case, tiny_model, tmp_path, existing_checkpoint, capsys)
    for culprit in case.culprits:
        assert culprit in err, f"{culprit!r} not in:\n{err}"
    assert "Traceback" not in err
    assert refuse_ray_start == []  # failed before Ray started
    assert _tree_digest(existing_checkpoint) == before


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40
