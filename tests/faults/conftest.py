"""Shared fixtures of the fault tests: armed fault injection, and one unbroken reference run
the recovered runs must reproduce."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from pipeline.infra import fault_injection
from tests.integration.conftest import build_tiny_config, ray_session, tiny_config  # noqa: F401 - shared fixtures

# Runs that recover must end where this unbroken run ends: 2 steps, a checkpoint after each, a
# reward with signal (a random tiny model never solves the task).
STEPS = 2
RUN_OVERRIDES = (
    f"total_steps={STEPS}",
    "checkpoint.every_steps=1",
    "checkpoint.keep_last=3",
    "reward.function=tests.integration.reward_fns:digit_fraction",
)


@pytest.fixture
def fault_dir(tmp_path, monkeypatch) -> str:
    """A directory for :func:`pipeline.infra.fault_injection.arm`, visible to every actor started
    by this test's driver (and to jobs given it in their runtime_env)."""
    directory = str(tmp_path / "faults")
    os.makedirs(directory)
    monkeypatch.setenv(fault_injection.ENV, directory)
    return directory


def run_to_end(cfg):
    from pipeline.stages.train import Trainer

    trainer = Trainer(cfg)
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.shutdown()


def logged_steps(log_dir: str) -> list[dict]:
    """Every row of ``metrics.jsonl`` in file order (duplicates would show)."""
    with open(os.path.join(log_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def policy_weights(model_dir: str) -> dict:
    return load_file(os.path.join(model_dir, "model.safetensors"))


def max_weight_difference(a_dir: str, b_dir: str) -> float:
    a, b = policy_weights(a_dir), policy_weights(b_dir)
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="session")
def reference_run(tiny_model, ray_session, tmp_path_factory) -> str:
    """The unbroken run (``RUN_OVERRIDES``); returns its directory (``logs``, ``policy``)."""
    run_dir = str(tmp_path_factory.mktemp("reference"))
    run_to_end(build_tiny_config(tiny_model, run_dir, *RUN_OVERRIDES))
    return run_dir
