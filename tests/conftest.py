"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from pipeline.config import RayppoConfig


class RayStarted(BaseException):
    """Raised when code under ``refuse_ray_start`` starts Ray. A BaseException, so the CLI's
    ``except Exception`` handlers cannot turn it into an ordinary exit status."""


@pytest.fixture
def refuse_ray_start(monkeypatch) -> list[str]:
    """Makes starting Ray fail the test, and returns the list of attempts (empty when none).

    Holds whether or not another test's Ray session is up (under ``make test`` one usually is):
    ``ray.is_initialized`` answers False, so any Ray call goes through Ray's auto-init to
    ``ray.init``. Every stage starts Ray through ``pipeline.controller.ray_setup.init_ray``, which it imports
    inside the function that calls it, so replacing the module attribute reaches all of them."""
    import ray

    from pipeline.controller import ray_setup

    attempts: list[str] = []

    def refuse(name):
        def start(*args, **kwargs):
            attempts.append(name)
            raise RayStarted(f"{name} was called: Ray started where the test expects it not to")
        return start

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(ray_setup, "init_ray", refuse("pipeline.controller.ray_setup.init_ray"))
    return attempts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A locally built tiny Qwen2 model and tokenizer (random weights), built once per session."""
    from pipeline.stages.init_model import init_model

    cfg = RayppoConfig()
    cfg.init.output_dir = str(tmp_path_factory.mktemp("models") / "tiny")
    cfg.init.preset = "tiny"
    cfg.init.corpus_size = 1000
    cfg.init.vocab_size = 300
    return init_model(cfg.init, cfg.data)


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_model, tmp_path_factory) -> str:
    """A sequence-classification reward model (one label, random head) on the tiny model's
    backbone and tokenizer, with the ``reward_stats.json`` a trained one carries."""
    import json
    import os

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = str(tmp_path_factory.mktemp("models") / "tiny_rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    with open(os.path.join(out, "reward_stats.json"), "w") as f:
        json.dump({"mean": 0.25, "std": 2.0}, f)
    return out
