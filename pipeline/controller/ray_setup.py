"""Starting or joining Ray. (Where the roles then run is :mod:`pipeline.controller.placement`.)"""

from __future__ import annotations

import math
import os

import ray

from pipeline.config import RayppoConfig
from pipeline.controller.placement import requested_resources

# Worker processes inherit these so vLLM and torch stay quiet and single-threaded per role.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
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
