"""Fixtures of the model-family tests: the real Qwen3, Llama-3.1 and Gemma-3 tokenizers
(``make tokenizers`` fetches them; a test fails, never skips, without them) and tiny random
models of each family's architecture built around them, once per session."""

from __future__ import annotations

import pytest

from pipeline.infra.tokenizer_families import FAMILIES, resolve_tokenizer_path
from tests.integration.conftest import ray_session, tiny_config  # noqa: F401 - shared fixtures

FAMILY_NAMES = tuple(FAMILIES)


def family_path(family: str) -> str:
    try:
        return resolve_tokenizer_path(family)
    except ValueError as err:  # not fetched: the suite's set-up was skipped
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """``family_models(name)``: a tiny random model of the family's architecture with its real
    tokenizer (full vocabulary), built on first use."""
    from pipeline.config import load_config
    from pipeline.stages.init_model import init_model

    built: dict[str, str] = {}

    def get(family: str, task: str = "arithmetic") -> str:
        key = f"{family}-{task}"
        if key not in built:
            family_path(family)
            out = str(tmp_path_factory.mktemp("families") / key)
            cfg = load_config(None, [f"init.output_dir={out}", f"init.tokenizer_path={family}", f"data.task={task}"])
            built[key] = init_model(cfg.init, cfg.data)
        return built[key]

    return get


@pytest.fixture(scope="session")
def family_tokenizers():
    """``family_tokenizers(name)``: the family's tokenizer as fetched, loaded once."""
    from transformers import AutoTokenizer

    loaded: dict = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = AutoTokenizer.from_pretrained(family_path(family))
        return loaded[family]

    return get
