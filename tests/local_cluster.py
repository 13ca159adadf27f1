"""A real two-node Ray cluster on this machine (``cluster/local_cluster.py``) for the tests that
submit jobs to one."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    # cluster/ is a folder of deploy files, not a package: load the script by path.
    spec = importlib.util.spec_from_file_location("local_cluster", REPO / "cluster" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


local_cluster = _load()


@contextlib.contextmanager
def running_cluster(prefix: str, **stop_kwargs):
    """Start the cluster, yield it, stop it and remove its files."""
    # Short path: Ray's unix sockets live under it and must stay below 108 characters.
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    started = local_cluster.start(temp_dir)
    try:
        yield started
    finally:
        local_cluster.stop(started, **stop_kwargs)
        shutil.rmtree(temp_dir, ignore_errors=True)
