import dataclasses
import glob
import os
import typing

import pytest

from pipeline.config import (
    RayppoConfig,
    config_hash,
    field_docs,
    load_config,
    save_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sections():
    hints = typing.get_type_hints(RayppoConfig)
    return [RayppoConfig] + [h for h in hints.values() if dataclasses.is_dataclass(h)]


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config(None, ["learner.lr=3e-6", "data.train_files=[a.jsonl, b.jsonl]",
                             "model.critic_path=runs/critic", "checkpoint.export_dir=null"])
    path = save_config(cfg, tmp_path / "sub" / "run.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "run_name: exp\n"
        "learner:\n  lr: 1e-5\n  num_ranks: 1\n"
        "rollout:\n  temperature: 1\n"
        "algorithm:\n"  # empty section keeps defaults
    )
    cfg = load_config(str(path), ["learner.lr=2e-5", "checkpoint.resume=latest",
                                  "model.critic_path=null", "data.max_digits=3.0"])
    assert cfg.run_name == "exp"
    assert cfg.learner.lr == 2e-5 and isinstance(cfg.learner.lr, float)
    assert cfg.learner.num_ranks == 1
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)
    assert cfg.checkpoint.resume == "latest"
    assert cfg.model.critic_path is None
    assert cfg.data.max_digits == 3 and isinstance(cfg.data.max_digits, int)
    assert cfg.algorithm == RayppoConfig().algorithm


def test_hash_ignores_resume_and_total_steps():
    base = load_config(None)
    assert len(config_hash(base)) == 16
    assert config_hash(base) == config_hash(
        load_config(None, ["checkpoint.resume=latest", "total_steps=99"]))
    assert config_hash(base) != config_hash(load_config(None, ["learner.lr=2e-5"]))


def test_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown config key 'learner\.lrr' \(did you mean 'learner\.lr'\?\)"):
        load_config(None, ["learner.lrr=1e-5"])
    with pytest.raises(ValueError, match=r"'lr'.*learner\.lr"):
        load_config(None, ["lr=1e-5"])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  n_sample: 4\n")
    with pytest.raises(ValueError, match=r"rollout\.n_sample.*rollout\.n_samples"):
        load_config(str(path))


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="nope.yaml"):
        load_config(missing)
    bad = tmp_path / "broken.yaml"
    bad.write_text("learner: [1, 2\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_config(str(bad))
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ValueError, match="list.yaml"):
        load_config(str(top))


@pytest.mark.parametrize("override", ["learner.lr", "=3", "learner.lr=[1", 7])
def test_malformed_override(override):
    with pytest.raises(ValueError, match="override"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["learner.lr=abc"], r"learner\.lr: expected float, got 'abc'"),
        (["learner=5"], r"^learner: expected a mapping"),
        (["learner.lr={a: 1}"], r"learner\.lr: expected float"),
        (["learner.num_ranks=true"], r"learner\.num_ranks: expected int"),
        (["learner.num_ranks=1.5"], r"learner\.num_ranks: expected int"),
        (["model.trust_remote_code=1"], r"model\.trust_remote_code: expected bool"),
        (["data.train_files=a.jsonl"], r"data\.train_files: expected list of str"),
        (["data.train_files=[a, 1]"], r"data\.train_files"),
        (["run_name=null"], r"run_name: expected str"),
        (["learner.lr.x=1"], r"learner\.lr"),
    ],
)
def test_type_errors(overrides, field):
    with pytest.raises(ValueError, match=field):
        load_config(None, overrides, validate=False)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["init.architecture=gpt2"], r"init\.architecture"),
        (["init.preset=huge"], r"init\.preset"),
        (["model.dtype=float16"], r"model\.dtype"),
        (["data.task=sudoku"], r"data\.task"),
        (["rollout.engine=sglang"], r"rollout\.engine"),
        (["algorithm.advantage=ppo"], r"algorithm\.advantage"),
        (["algorithm.kl_mode=both"], r"algorithm\.kl_mode"),
        (["algorithm.kl_estimator=k4"], r"algorithm\.kl_estimator"),
        (["algorithm.loss_agg=sum"], r"algorithm\.loss_agg"),
        (["logging.wandb_mode=cloud"], r"logging\.wandb_mode"),
        (["learner.lr=0"], r"learner\.lr"),
        (["total_steps=0"], r"total_steps"),
        (["prompts_per_step=0"], r"prompts_per_step"),
        (["rollout.max_tokens=0"], r"rollout\.max_tokens"),
        (["learner.micro_batch_tokens=0"], r"learner\.micro_batch_tokens"),
        (["sft.batch_size=0"], r"sft\.batch_size"),
        (["algorithm.clip_low=1.0"], r"algorithm\.clip_low"),
        (["algorithm.clip_high=0"], r"algorithm\.clip_high"),
        (["algorithm.gamma=1.5"], r"algorithm\.gamma"),
        (["algorithm.lam=-0.1"], r"algorithm\.lam"),
        (["algorithm.kl_coef=-1"], r"algorithm\.kl_coef"),
        (["algorithm.entropy_coef=-0.01"], r"algorithm\.entropy_coef"),
        (["rollout.temperature=0"], r"rollout\.temperature"),
        (["rollout.max_staleness=2"], r"rollout\.max_staleness: must be 0 \(on-policy\) or 1"),
        (["rollout.max_staleness=-1"], r"rollout\.max_staleness"),
        (["rollout.top_p=1.5"], r"rollout\.top_p"),
        (["rollout.probe_tolerance=0"], r"rollout\.probe_tolerance"),
        (["rollout.gpu_memory_utilization=0"], r"rollout\.gpu_memory_utilization"),
        (["algorithm.advantage=grpo", "rollout.n_samples=1"],
         r"algorithm\.advantage.*rollout\.n_samples"),
        (["algorithm.advantage=rloo", "rollout.n_samples=1"],
         r"algorithm\.advantage.*rollout\.n_samples"),
        (["learner.num_ranks=3"],
         r"prompts_per_step \* rollout\.n_samples \(16 \* 8 = 128\).*learner\.num_ranks \* "
         r"learner\.mini_batches \(3 \* 1 = 3\)"),
        (["data.task=null"], r"data\.train_files"),
        (["data.task=null", "data.train_files=[a.jsonl]"], r"data\.eval_files"),
        (["data.min_digits=3", "data.max_digits=2"], r"data\.min_digits.*data\.max_digits"),
        (["data.min_digits=0"], r"data\.min_digits"),
        (["rollout.num_workers=17"], r"rollout\.num_workers.*prompts_per_step"),
        (["rollout.tensor_parallel_size=2"],
         r"rollout\.tensor_parallel_size.*resources\.gpus_per_rollout_worker"),
        (["checkpoint.every_steps=-1"], r"checkpoint\.every_steps"),
        (["checkpoint.keep_last=0"], r"checkpoint\.keep_last"),
        (["resources.dashboard_host=' '"], r"resources\.dashboard_host"),
        (["reward.function=mymodule"], r"reward\.function"),
    ],
)
def test_bad_configs(overrides, field):
    with pytest.raises(ValueError, match=field):
        load_config(None, overrides)


def test_validate_checks_configs_built_in_python():
    cfg = RayppoConfig()
    assert cfg.validate() is cfg
    cfg.learner.lr = 1  # an int is normalised to float
    assert isinstance(cfg.validate().learner.lr, float)
    cfg.learner.lr = "fast"
    with pytest.raises(ValueError, match=r"learner\.lr"):
        cfg.validate()


def test_several_errors_reported_together():
    with pytest.raises(ValueError) as info:
        load_config(None, ["learner.lr=-1", "rollout.top_p=0"])
    assert "learner.lr: must be > 0" in str(info.value)
    assert "rollout.top_p: must be > 0" in str(info.value)


def test_every_field_has_a_docstring():
    for cls in _sections():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name, "").strip(), f"{cls.__name__}.{f.name} has no docstring"


def test_shipped_configs_load_and_validate():
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
    if not paths:
        pytest.skip("no configs/*.yaml yet")
    for path in paths:
        load_config(path).validate()


def test_reward_eval_function_is_validated():
    with pytest.raises(ValueError, match="reward.eval_function"):
        load_config(None, ["reward.eval_function=not_an_import_path"])
    cfg = load_config(None, ["reward.function=pipeline.tasks:arithmetic_digit_credit", "reward.eval_function=builtin"])
    assert cfg.reward.eval_function == "builtin"
