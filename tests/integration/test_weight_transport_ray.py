"""Weights packed by a learner actor arrive bit-exact in another actor through Ray."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration


class _Source:
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.sd = {"a": torch.randn(64, 32, generator=g), "b": torch.randn(8, generator=g).to(torch.bfloat16)}

    def packed(self):
        from pipeline.infra.weight_transport import pack

        return pack(self.sd)

    def state_dict(self):
        return self.sd


class _Sink:
    def receive(self, payload):
        from pipeline.infra.weight_transport import unpack

        # Copy out of the read-only object-store memory, as an engine's reload does.
        return {k: v.clone() for k, v in unpack(payload).items()}


def test_packed_weights_cross_the_object_store_unchanged(ray_session):
    ray = ray_session
    source = ray.remote(_Source).options(num_cpus=0).remote()
    sink = ray.remote(_Sink).options(num_cpus=0).remote()
    try:
        got = ray.get(sink.receive.remote(source.packed.remote()))  # ref passed actor to actor
        want = ray.get(source.state_dict.remote())
    finally:
        ray.kill(source)
        ray.kill(sink)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
