"""The ``tune`` section: search-space parsing and validation, trial configs, result helpers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.cli import main, parse
from pipeline.config import load_config, save_config
from pipeline.config.search_space import apply_values, parse_space, pbt_mutations, tune_param_space
from pipeline.stages.sweep import TrialRow, best_row, policy_checksum, results_table, sweep_dir, trial_config


def space(text: str, *extra: str):
    return load_config(None, [f"tune.search_space={text}", *extra])


def test_samplers_parse_with_yaml_strings_coerced():
    cfg = space(
        "{learner.lr: {loguniform: [1e-5, 1e-3]}, rollout.temperature: {choice: ['0.7', 1]},"
        " learner.ppo_epochs: {grid: [1, 2]}, learner.warmup_steps: {randint: [0, 4]},"
        " algorithm.clip_low: {quniform: [0.1, 0.3, 0.05]}, rollout.top_p: {uniform: [0.8, 1]}}"
    )
    dims = {d.key: d for d in parse_space(cfg)}
    # YAML 1.1 reads 1e-5 as a string: the sampler gets numbers all the same.
    assert dims["learner.lr"].args == (1e-5, 1e-3)
    assert dims["rollout.temperature"].args == (0.7, 1.0)
    assert all(isinstance(v, float) for v in dims["rollout.temperature"].args)
    assert dims["learner.ppo_epochs"].args == (1, 2)
    assert dims["learner.warmup_steps"].candidates() == [0, 3]  # randint's high is exclusive

    domains = tune_param_space(list(dims.values()))
    assert domains["learner.ppo_epochs"] == {"grid_search": [1, 2]}
    assert domains["learner.lr"].lower == 1e-5 and domains["learner.lr"].upper == 1e-3
    assert domains["rollout.temperature"].categories == [0.7, 1.0]
    mutations = pbt_mutations(list(dims.values()))
    assert mutations["learner.ppo_epochs"] == [1, 2]  # PBT moves a grid value to a neighbour
    assert mutations["rollout.temperature"] == [0.7, 1.0]
    assert mutations["learner.lr"].lower == 1e-5


@pytest.mark.parametrize(
    "text, extra, message",
    [
        ("{learner.lrr: {uniform: [0, 1]}}", [], "tune.search_space.learner.lrr: 'learner.lrr' is not a config field (did you mean 'learner.lr'?)"),
        ("{learner: {grid: [1]}}", [], "tune.search_space.learner: 'learner' is a config section"),
        ("{checkpoint.dir: {choice: [a, b]}}", [], "tune.search_space.checkpoint.dir: the sweep sets this field"),
        ("{tune.metric: {choice: [a, b]}}", [], "tune.search_space.tune.metric: the sweep sets this field"),
        ("{learner.lr: {logunifrom: [1e-5, 1e-3]}}", [], "unknown sampler 'logunifrom' (did you mean 'loguniform'?)"),
        ("{learner.lr: {choice: [1e-3], grid: [1e-4]}}", [], "tune.search_space.learner.lr: expected exactly one sampler"),
        ("{learner.lr: 1e-3}", [], "tune.search_space.learner.lr: expected exactly one sampler"),
        ("{learner.lr: {loguniform: [0, 1]}}", [], "loguniform expects [low, high] with 0 < low < high"),
        ("{learner.lr: {uniform: [1, 0.5]}}", [], "uniform expects [low, high] with low < high"),
        ("{learner.lr: {uniform: [a, 1]}}", [], "uniform expects [low, high]"),
        ("{learner.lr: {quniform: [0.1, 0.5]}}", [], "quniform expects [low, high, q]"),
        ("{learner.lr: {quniform: [0.1, 0.5, 0]}}", [], "quniform expects [low, high, q]"),
        ("{learner.warmup_steps: {randint: [0, 2.5]}}", [], "randint expects [low, high] integers"),
        ("{learner.num_ranks: {loguniform: [1, 4]}}", [], "loguniform samples floats but 'learner.num_ranks' is an integer field; use randint, choice or grid"),
        ("{learner.lr: {randint: [1, 4]}}", [], "randint samples integers but 'learner.lr' is a float field"),
        ("{rollout.engine: {uniform: [0, 1]}}", [], "'rollout.engine' is a string field; use choice or grid"),
        ("{learner.lr: {choice: []}}", [], "choice expects a non-empty list"),
        ("{learner.lr: {choice: [1e-3, fast]}}", [], "tune.search_space.learner.lr.choice[1]: expected float, got 'fast'"),
        ("{rollout.engine: {grid: [hf, tgi]}}", [], "tune.search_space.rollout.engine: value 'tgi' gives an invalid config: rollout.engine: must be one of vllm, hf"),
        # 16 prompts x 8 samples cannot be split among 3 ranks: caught before any trial runs.
        ("{learner.num_ranks: {grid: [1, 3]}}", [], "tune.search_space.learner.num_ranks: value 3 gives an invalid config: prompts_per_step * rollout.n_samples"),
        ("{learner.lr: {loguniform: [-1, 1]}}", [], "loguniform expects"),
        ("{learner.clip_low: {uniform: [0.1, 0.2]}}", [], "'learner.clip_low' is not a config field"),
        ("{}", ["tune.scheduler=pbt"], "tune.search_space: the pbt scheduler needs at least one hyperparameter"),
        ("{learner.num_ranks: {grid: [1, 2]}}", ["tune.scheduler=pbt"], "pbt cannot perturb a field that changes a trial's placement group"),
        ("{resources.cpus_per_learner: {grid: [1.0, 2.0]}}", ["tune.scheduler=pbt"], "tune.search_space.resources.cpus_per_learner: pbt cannot perturb"),
        ("{}", ["tune.scheduler=asha", "tune.grace_period=5", "total_steps=4"], "tune.grace_period (5) must be <= total_steps (4)"),
        ("{learner.lr: {uniform: [0.1, 0.2]}}", ["tune.scheduler=pbt", "tune.perturbation_interval=4", "total_steps=4"], "tune.perturbation_interval (4) must be < total_steps (4)"),
        ("{}", ["tune.name=a/b"], "tune.name: must be a plain directory name"),
        ("{}", ["tune.scheduler=asha", "eval_every=0"], "tune.metric='eval/accuracy' is measured every eval_every steps, and eval_every is 0"),
        ("{}", ["tune.metric=' '"], "tune.metric: must name a metric"),
    ],
)
def test_bad_search_spaces_name_the_culprit(text, extra, message):
    with pytest.raises(ValueError) as err:
        space(text, *extra)
    assert message in str(err.value)


def test_apply_values_copies_and_coerces():
    base = space("{learner.lr: {loguniform: [1e-5, 1e-3]}, learner.ppo_epochs: {grid: [1, 2]}}")
    # Tune hands out numpy scalars; int fields must stay ints.
    cfg = apply_values(base, {"learner.lr": np.float64(3e-4), "learner.ppo_epochs": np.int64(2), "other": 1})
    assert cfg.learner.lr == 3e-4 and type(cfg.learner.lr) is float
    assert cfg.learner.ppo_epochs == 2 and type(cfg.learner.ppo_epochs) is int
    assert base.learner.lr == 1e-5 and base.learner.ppo_epochs == 1  # the base is untouched
    with pytest.raises(ValueError, match="learner.lr: must be > 0"):
        apply_values(base, {"learner.lr": -1.0})


def test_trial_config_keeps_outputs_in_the_trial(tmp_path):
    base = space(
        "{learner.lr: {uniform: [1e-4, 1e-3]}}",
        "tune.scheduler=pbt", "tune.perturbation_interval=3", "checkpoint.every_steps=10",
        "checkpoint.dir=/elsewhere/ckpt", "logging.wandb_mode=disabled",
    )
    run_dir = str(tmp_path / "sweep" / "runs" / "abc_00001")
    cfg = trial_config(base, {"learner.lr": 5e-4}, run_dir, "sweep")
    assert cfg.learner.lr == 5e-4
    assert cfg.checkpoint.dir == os.path.join(run_dir, "checkpoints")  # never shared among trials
    assert cfg.logging.dir == os.path.join(run_dir, "logs")
    assert cfg.checkpoint.export_dir == os.path.join(run_dir, "policy")
    assert cfg.checkpoint.every_steps == 3  # PBT needs a checkpoint at every perturbation
    assert cfg.logging.wandb_group == "sweep" and cfg.run_name == "sweep-abc_00001"


def test_wandb_run_joins_the_sweep_group(tmp_path, monkeypatch):
    from pipeline.infra.tracking import MetricsLogger

    for name in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / name.lower()))
    log = MetricsLogger(str(tmp_path / "logs"), "sweep-t1", {}, 1, wandb_mode="offline",
                        progress_bar=False, wandb_group="sweep")
    try:
        assert log._run.group == "sweep"
    finally:
        log.close()


def test_policy_checksum_sees_one_ulp():
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16)}
    same = {k: v.clone() for k, v in tensors.items()}
    assert policy_checksum(tensors, tensors) == policy_checksum(same, tensors)
    same["a"][1, 2] = torch.nextafter(same["a"][1, 2], torch.tensor(float("inf")))
    assert policy_checksum(tensors, tensors) != policy_checksum(same, tensors)
    with pytest.raises(ValueError, match="lack tensor 'c'"):
        policy_checksum(tensors, ["a", "c"])


def test_best_row_and_table():
    cfg = space("{learner.lr: {uniform: [1e-4, 1e-3]}}", "tune.metric=reward/mean", "total_steps=4")
    rows = [
        TrialRow("t0", {"learner.lr": 1e-4}, 0.5, 0.6, 4, "/x/checkpoint_000003", False),
        TrialRow("t1", {"learner.lr": 5e-4}, 0.7, 0.7, 2, "/y/checkpoint_000001", False),
        TrialRow("t2", {"learner.lr": 9e-4}, float("nan"), float("nan"), 0, "-", True),
    ]
    assert best_row(rows, "max").trial == "t1"
    assert best_row(rows, "min").trial == "t0"
    assert best_row(rows[2:], "max") is None
    table = results_table(rows, cfg).splitlines()
    assert table[0].split() == ["trial", "hyperparameters", "reward/mean", "last", "best", "steps", "checkpoint"]
    assert table[3].split()[:5] == ["t1", "learner.lr=0.0005", "0.7", "0.7", "2/4"]
    assert "t2 (error)" in table[4]


def test_cli_sweep_flags_and_early_errors(tmp_path, capsys, refuse_ray_start):
    assert parse(["sweep", "c.yaml", "--resume", "learner.lr=1e-4"]).overrides == ["learner.lr=1e-4"]
    with pytest.raises(SystemExit) as exit_info:
        parse(["train", "c.yaml", "--resume"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --resume" in capsys.readouterr().err

    path = save_config(load_config(None, [f"storage_path={tmp_path}", "tune.name=nothing"]), tmp_path / "c.yaml")
    assert main(["sweep", path, "--resume"]) == 2
    assert refuse_ray_start == []  # failed before Ray started
    assert f"--resume: no sweep to resume at {tmp_path / 'nothing'}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="storage_path: rayppo sweep needs a filesystem path"):
        sweep_dir(load_config(None, ["storage_path=s3://bucket/sweeps"]))
