"""Fixtures of the learner tests: the shared tiny model and a one-rank gloo process group."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> str:
    return tiny_model


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group for workers built in this process (FSDP2 needs one)."""
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
