"""EnginePool's recovery rules on real Ray actors that stand in for engines (the vLLM path is
test_engine_loss): a hung engine is replaced after ``resources.engine_timeout_s``, and a batch
generated ahead by older weights reruns with those weights, then the current ones come back."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from pipeline.config import RayppoConfig
from rollout_workers.engine_pool import EnginePool

pytestmark = pytest.mark.integration


class ScriptedEngine:
    """Answers like an engine; hangs or dies on the calls its script names."""

    def __init__(self, index: int, script: dict):
        self.index, self.script, self.loaded = index, script, []
        self.held = 0

    def version(self) -> int:
        return self.held

    def load_weights(self, state, version: int) -> float:
        self.held = version
        self.loaded.append(version)
        return 0.0

    def generate(self, chunk: list, step: int) -> dict:
        if self.script.get("hang_on_step") == step:
            time.sleep(3600)
        if self.script.get("die_on_step") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"engine": self.index, "chunk": chunk, "step": step, "weights": self.held}

    def history(self) -> list:
        return self.loaded


def _pool(scripts: dict, **resources) -> EnginePool:
    cfg = RayppoConfig()
    cfg.resources.engine_timeout_s = resources.get("engine_timeout_s", 30.0)
    cfg.resources.placement_timeout_s = 30.0
    cfg.resources.max_engine_restarts = 2
    actor = ray.remote(num_cpus=0.01)(ScriptedEngine)
    started: dict[int, int] = {}

    def start(index: int):
        started[index] = started.get(index, 0) + 1
        # Only the first actor of a slot follows the script; its replacement behaves.
        return actor.remote(index, scripts.get(index, {}) if started[index] == 1 else {})

    return EnginePool(cfg, start, 2)


def test_a_hung_engine_is_replaced_after_the_timeout(ray_session):
    pool = _pool({1: {"hang_on_step": 5}}, engine_timeout_s=3.0)
    try:
        pool.load_weights(ray.put({"w": 1}), 1)
        calls = [pool.call(i, "generate", [i * 10, i * 10 + 1], 5, offset=i * 2) for i in range(2)]
        start = time.monotonic()
        out = pool.results(calls)
        assert time.monotonic() - start < 30  # the timeout, not the hour the engine sleeps
        assert [r["chunk"] for r in out] == [[0, 1], [10, 11]] and all(r["weights"] == 1 for r in out)
        assert pool.metrics()["faults/engine_restarts"] == 1
    finally:
        pool.shutdown()


def test_a_batch_generated_ahead_reruns_with_the_weights_that_sampled_it(ray_session):
    pool = _pool({0: {"die_on_step": 9}})
    try:
        pool.load_weights(ray.put({"w": 1}), 1)
        ahead = [pool.call(0, "generate", [0], 9)]  # engine 0 dies sampling it with version 1
        pool.load_weights(ray.put({"w": 2}), 2)  # queued behind it, so lost too: replaced, holds 2
        (result,) = pool.results(ahead)
        assert result["weights"] == 1  # rerun on version 1, as the lost engine sampled it
        assert ray.get(pool.actors[0].version.remote()) == 2  # then back to the current weights
        assert ray.get(pool.actors[0].history.remote()) == [2, 1, 2]
        assert pool.metrics()["faults/engine_restarts"] == 1
    finally:
        pool.shutdown()
