"""Starting or joining Ray, and failing fast when the roles cannot be placed."""

from __future__ import annotations

import math
import os

import ray

from pipeline.config import RayppoConfig

# Worker processes inherit these so vLLM and torch stay quiet and single-threaded per role.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def requested_resources(cfg: RayppoConfig) -> dict[str, float]:
    res, lc, rc = cfg.resources, cfg.learner, cfg.rollout
    return {
        "CPU": lc.num_ranks * res.cpus_per_learner + rc.num_workers * res.cpus_per_rollout_worker,
        "GPU": lc.num_ranks * res.gpus_per_learner + rc.num_workers * res.gpus_per_rollout_worker,
    }


def init_ray(cfg: RayppoConfig) -> None:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray sized for this run."""
    if ray.is_initialized():
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    runtime_env = {"env_vars": {k: os.environ[k] for k in WORKER_ENV}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=True)
        return
    needed = requested_resources(cfg)
    num_cpus = cfg.resources.local_num_cpus or max(os.cpu_count() or 1, math.ceil(needed["CPU"]))
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=None,  # started when ray[default] is installed, as it is here
        dashboard_host=cfg.resources.dashboard_host,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level="warning",
    )


def check_resources(cfg: RayppoConfig) -> None:
    """Raise at once (instead of hanging) when the cluster lacks what the roles ask for."""
    have = ray.cluster_resources()
    for name, amount in requested_resources(cfg).items():
        if amount > have.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"resources: this run asks for {amount:g} {name} in total "
                f"({cfg.learner.num_ranks} learner ranks, {cfg.rollout.num_workers} rollout workers) "
                f"but the Ray cluster has {have.get(name, 0.0):g} {name}"
            )
