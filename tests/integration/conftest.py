"""Shared fixtures for integration tests: one Ray instance per session, small run configs.
(The tiny model fixture lives in ``tests/conftest.py``.)"""

from __future__ import annotations

import os

import pytest

from pipeline.config import RayppoConfig, load_config


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipeline.controller.ray_setup import init_ray

    cfg = RayppoConfig()
    cfg.resources.local_num_cpus = 4  # 2 learner ranks + up to 2 engines, time-shared on 2 cores
    init_ray(cfg)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_config():
    """Builder of small run configs: ``tiny_config(model_path, run_dir, *overrides)``."""
    return build_tiny_config


def build_tiny_config(model_path: str, run_dir: str, *overrides: str) -> RayppoConfig:
    """A run small enough for CI: 4 prompts x 4 samples, 6 tokens, 2 learner ranks, 1 engine."""
    base = [
        f"model.path={model_path}",
        "total_steps=2",
        "prompts_per_step=4",
        "eval_every=0",
        "data.num_train=64",
        "data.num_eval=8",
        "rollout.n_samples=4",
        "rollout.max_tokens=6",
        "rollout.kv_cache_gib=1",
        "learner.num_ranks=2",
        "learner.lr=1e-3",
        "algorithm.kl_coef=0.01",
        f"checkpoint.dir={os.path.join(run_dir, 'checkpoints')}",
        "checkpoint.every_steps=0",
        f"checkpoint.export_dir={os.path.join(run_dir, 'policy')}",
        f"logging.dir={os.path.join(run_dir, 'logs')}",
        "logging.wandb_mode=disabled",
        "logging.progress_bar=false",
    ]
    return load_config(None, base + list(overrides))
