"""The pieces of fault recovery that need no cluster: fault injection by a real SIGKILL, what
counts as a fault, the restart budget, ``checkpoint.resume: auto`` and the metrics rewind.
(The same paths run for real in test_engine_loss, test_learner_loss and test_cluster_faults.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from ray import exceptions as rex

from learners import checkpoint
from pipeline.config import RayppoConfig
from pipeline.controller.recovery import Recovery
from pipeline.infra import fault_injection, faults
from pipeline.infra.tracking import MetricsLogger

_POINT = "import sys; from pipeline.infra import fault_injection as f; f.point('learner.update', rank=int(sys.argv[1])); print('alive')"


def _reach_point(rank: int, directory: str) -> subprocess.CompletedProcess:
    env = {**os.environ, fault_injection.ENV: directory, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-c", _POINT, str(rank)], env=env, capture_output=True, text=True, timeout=60)


def test_an_armed_point_kills_the_matching_process_once(tmp_path):
    directory = str(tmp_path)
    fault_injection.arm(directory, "learner.update", rank=1)
    assert _reach_point(0, directory).stdout.strip() == "alive"  # tags differ: no fault
    killed = _reach_point(1, directory)
    assert killed.returncode == -signal.SIGKILL and killed.stdout == ""
    assert fault_injection.fired(directory, "learner.update")
    assert _reach_point(1, directory).stdout.strip() == "alive"  # fired once: its replacement lives


def test_an_armed_file_that_is_not_an_object_names_itself(tmp_path, monkeypatch):
    path = tmp_path / "learner.update.json"
    path.write_text("[1, 2]")
    monkeypatch.setenv(fault_injection.ENV, str(tmp_path))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} must hold a JSON object of tags .* got list: \[1, 2\]"):
        fault_injection.point("learner.update", rank=1)
    assert path.exists()  # not fired


def test_faults_are_machinery_failures_not_bugs():
    assert faults.is_fault(rex.GetTimeoutError("slow"))
    assert faults.is_fault(rex.ObjectLostError("ab" * 14, "owner", "call site"))
    assert faults.is_fault(faults.CallTimeout("x")) and faults.is_fault(faults.LearnerFailure("x"))
    assert not faults.is_fault(ValueError("bad input")) and not faults.is_fault(RuntimeError("bug"))
    assert not faults.is_fault(faults.PlacementTimeout("waits for a node"))


class _Trainer:
    """Stands in for the driver: records restarts, can fail them."""

    def __init__(self, max_failures: int, restart_errors=()):
        self.cfg = RayppoConfig()
        self.cfg.resources.max_failures = max_failures
        self.restart_errors = list(restart_errors)
        self.restarts = 0
        self.step_index = 3

    def restart_learners(self):
        self.restarts += 1
        if self.restart_errors:
            raise self.restart_errors.pop(0)
        return "ckpt/step_000003"


def test_a_fault_restarts_the_group_and_the_loop_goes_on():
    trainer = _Trainer(max_failures=2)
    recovery = Recovery(trainer)
    with recovery.guard():
        raise faults.LearnerFailure("learner update: ActorDiedError: rank 1 died")
    assert trainer.restarts == 1 and recovery.metrics()["faults/learner_restarts"] == 1
    with pytest.raises(ValueError, match="a bug"):  # not a fault: never retried
        with recovery.guard():
            raise ValueError("a bug")
    assert trainer.restarts == 1


def test_a_restart_attempt_that_faults_is_retried_as_the_same_failure(monkeypatch):
    monkeypatch.setattr("pipeline.controller.recovery._BACKOFF_S", 0.0)
    trainer = _Trainer(max_failures=1, restart_errors=[faults.LearnerFailure("start: node still listed")] * 2)
    recovery = Recovery(trainer)
    with recovery.guard():
        raise faults.LearnerFailure("update: rank died")
    assert trainer.restarts == 3 and recovery.failures == 1
    with pytest.raises(RuntimeError, match=r"resources.max_failures=1") as err:  # a second failure
        with recovery.guard():
            raise faults.LearnerFailure("update: rank died again")
    assert isinstance(err.value.__cause__, faults.LearnerFailure) and trainer.restarts == 3


def test_a_group_that_never_restarts_stops_the_run(monkeypatch):
    monkeypatch.setattr("pipeline.controller.recovery._BACKOFF_S", 0.0)
    trainer = _Trainer(max_failures=-1, restart_errors=[faults.LearnerFailure("start")] * 10)
    with pytest.raises(RuntimeError, match=r"could not be restarted in 4 attempts"):
        with Recovery(trainer).guard():
            raise faults.LearnerFailure("update")
    assert trainer.restarts == 4


def test_zero_failures_allowed_means_the_first_one_ends_the_run():
    trainer = _Trainer(max_failures=0)
    with pytest.raises(RuntimeError, match=r"max_failures=0"):
        with Recovery(trainer).guard():
            raise faults.CallTimeout("learner update: no answer within 1 s")
    assert trainer.restarts == 0


def test_resume_auto_takes_latest_or_starts_fresh(tmp_path):
    root = str(tmp_path / "checkpoints")
    assert checkpoint.resolve(root, "auto") is None  # nothing yet: a fresh start
    tmp = checkpoint.begin(root, 2)
    committed = checkpoint.commit(root, 2, tmp, {"step": 2}, keep_last=2)
    checkpoint.begin(root, 3)  # a checkpoint cut short by a crash
    assert checkpoint.resolve(root, "auto") == os.path.realpath(committed)
    os.remove(os.path.join(root, "latest"))
    os.symlink("step_000003.tmp", os.path.join(root, "latest"))
    with pytest.raises(ValueError, match=r"checkpoint.resume='auto'.*step_000003.tmp"):
        checkpoint.resolve(root, "auto")


def test_rewind_replaces_the_steps_a_restart_runs_again(tmp_path):
    logger = MetricsLogger(str(tmp_path), "t", {}, 4, wandb_mode="disabled", progress_bar=False)
    for step in range(4):
        logger.log(step, {"reward/mean": float(step)})
    logger.rewind()  # restarted from the checkpoint of step 1: steps 2.. are run again
    for step in (2, 3, 4):
        logger.log(step, {"reward/mean": 10.0 + step})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["reward/mean"] for r in rows] == [0.0, 1.0, 12.0, 13.0, 14.0]
