"""CLI error paths that fail before Ray starts, and the resource arithmetic behind the checks."""

import pytest

from pipeline import cli
from pipeline.config import load_config
from pipeline.controller.placement import requested_resources

pytestmark = pytest.mark.usefixtures("refuse_ray_start")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "run_name: cli-test\n"
        "learner:\n"
        "  lr: 1.0e-5\n"
        f"model:\n  path: {tmp_path / 'no-such-model'}\n"
    )
    return path


def test_unknown_override_key_exits_2_naming_the_field(config_file, capsys):
    assert cli.main(["train", str(config_file), "learner.lrr=1e-4"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("rayppo: config error: ")
    assert "learner.lrr" in captured.err
    assert "did you mean 'learner.lr'?" in captured.err
    assert captured.out == ""


def test_bad_override_value_exits_2_naming_the_field(config_file, capsys):
    assert cli.main(["train", str(config_file), "rollout.n_samples=1"]) == 2
    err = capsys.readouterr().err
    assert "rollout.n_samples" in err and "algorithm.advantage='grpo'" in err
    assert cli.main(["eval", str(config_file), "learner.lr=fast"]) == 2
    assert "learner.lr: expected float, got 'fast'" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["train", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "rayppo: config error: cannot read config file" in err
    assert "nope.yaml" in err


def test_invalid_yaml_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed\n")
    assert cli.main(["sft", str(bad)]) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_train_with_missing_model_path_exits_2(config_file, tmp_path, capsys, refuse_ray_start):
    assert cli.main(["train", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayppo train: error: model.path: ")
    assert str(tmp_path / "no-such-model") in err
    assert "does not exist" in err
    assert refuse_ray_start == []  # failed in Trainer.__init__, before init_ray


def test_eval_with_model_dir_lacking_config_json_exits_2(config_file, tmp_path, capsys):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert cli.main(["eval", str(config_file), f"model.path={empty}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayppo eval: error: model.path: ")
    assert "has no config.json" in err


def test_unknown_command_is_an_argparse_error(config_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fly", str(config_file)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_parse_splits_command_config_and_overrides():
    args = cli.parse(["train", "configs/debug.yaml", "learner.lr=1e-4", "seed=3"])
    assert (args.command, args.config, args.overrides) == (
        "train", "configs/debug.yaml", ["learner.lr=1e-4", "seed=3"]
    )
    assert cli.parse(["eval", "x.yaml"]).overrides == []


# ----------------------------------------------------------------------------- resources
def test_requested_resources_defaults():
    # 2 learner ranks x 1 CPU + 1 rollout worker x 1 CPU; no GPUs.
    assert requested_resources(load_config(None)) == {"CPU": 3.0, "GPU": 0.0}


def test_requested_resources_arithmetic():
    cfg = load_config(
        None,
        [
            "prompts_per_step=12",
            "learner.num_ranks=3",
            "rollout.num_workers=2",
            "resources.cpus_per_learner=2",
            "resources.gpus_per_learner=0.5",
            "resources.cpus_per_rollout_worker=4",
            "resources.gpus_per_rollout_worker=1",
        ],
    )
    # CPU: 3 x 2 + 2 x 4 = 14; GPU: 3 x 0.5 + 2 x 1 = 3.5.
    assert requested_resources(cfg) == {"CPU": 14.0, "GPU": 3.5}
