"""Engine settings that the benchmarks rely on: forced completion length and engine threads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline.config import load_config


def test_ignore_eos_reaches_the_engines_sampling():
    from pipeline.driver import Trainer

    for flag in (True, False):
        cfg = load_config(None, [f"rollout.ignore_eos={str(flag).lower()}", "rollout.max_tokens=7"])
        sampling = Trainer._sampling(SimpleNamespace(cfg=cfg))
        assert sampling.ignore_eos is flag and sampling.max_tokens == 7


def test_engine_threads_are_validated_and_applied():
    from rollout_workers.vllm_engine import set_cpu_threads

    with pytest.raises(ValueError, match="rollout.torch_threads"):
        load_config(None, ["rollout.torch_threads=-1"])
    before = torch.get_num_threads()
    try:
        set_cpu_threads(0)  # 0 keeps what the process has
        assert torch.get_num_threads() == before
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
