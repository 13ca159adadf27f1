"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from pipeline.config import RayppoConfig


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A locally built tiny Qwen2 model and tokenizer (random weights), built once per session."""
    from pipeline.model_init import init_model

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
