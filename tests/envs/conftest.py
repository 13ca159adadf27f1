"""Fixtures of the environment tests. ``envs_ray`` is the same local Ray the integration
tests use (``pipeline.controller.ray_setup.init_ray``); when one already runs in the session it is reused."""

from __future__ import annotations

import pytest

from pipeline.config import RayppoConfig


@pytest.fixture(scope="session")
def envs_ray():
    import ray

    from pipeline.controller.ray_setup import init_ray

    started = not ray.is_initialized()
    cfg = RayppoConfig()
    cfg.resources.local_num_cpus = 4  # as tests/integration: roles time-share the 2 cores
    init_ray(cfg)
    yield ray
    if started:
        ray.shutdown()
