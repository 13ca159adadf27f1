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
