"""Deterministic fault injection for tests: a process kills itself (SIGKILL) at a named point.

Off unless ``RAYPPO_FAULTS`` names a directory. A point fires when ``<dir>/<point>.json``
exists and every key in it equals the tag of that name given at the call site, e.g.
``{"engine": 1}`` at ``rollout.generate``. The first process to rename the file away fires,
so a fault fires once per arming, also across the processes that replace the killed one.

Points: ``rollout.generate`` (engine, step), ``rollout.load_weights`` (engine),
``learner.update`` (rank, optimizer_steps: steps done before this update), and
``driver.checkpoint`` (step: the learner shards of ``step_NNNNNN.tmp`` are written, the
checkpoint is not committed).
"""

from __future__ import annotations

import json
import os
import signal

ENV = "RAYPPO_FAULTS"


def point(name: str, **tags) -> None:
    """Kill this process here if a fault is armed for ``name`` and ``tags``."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    path = os.path.join(directory, f"{name}.json")
    try:
        with open(path, encoding="utf-8") as f:
            wanted = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(wanted, dict):
        raise ValueError(f"{ENV}: {path} must hold a JSON object of tags (as fault_injection.arm writes, "
                         f"e.g. {{\"rank\": 1}}), got {type(wanted).__name__}: {wanted!r}")
    if any(tags.get(key) != value for key, value in wanted.items()):
        return
    try:
        os.rename(path, path + ".fired")
    except OSError:
        return  # another process fired it first
    os.kill(os.getpid(), signal.SIGKILL)


def arm(directory: str, name: str, **tags) -> str:
    """Arm ``name`` to fire at the first call whose tags include ``tags``."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(tags, f)
    os.replace(path + ".tmp", path)
    return path


def fired(directory: str, name: str) -> bool:
    return os.path.exists(os.path.join(directory, f"{name}.json.fired"))


def actor_env() -> dict[str, str]:
    """Environment an actor needs to see the faults armed for this driver (empty when off)."""
    directory = os.environ.get(ENV)
    return {ENV: directory} if directory else {}
