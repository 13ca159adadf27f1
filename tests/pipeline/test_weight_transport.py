"""Packing weights as byte arrays keeps every value, dtype and shape."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from pipeline.infra.weight_transport import pack, unpack


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fp32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(7, generator=g).to(torch.float16),
        "transposed": torch.randn(4, 6, generator=g).t(),  # not contiguous
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "ints": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


def test_pack_then_unpack_is_bit_exact_for_every_dtype_and_shape():
    sd = _state_dict()
    packed = pack(sd)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint8 for a, _, _ in packed.values())
    # Through pickle protocol 5, as Ray's object store carries it.
    restored = unpack(pickle.loads(pickle.dumps(packed, protocol=5)))
    assert list(restored) == list(sd)
    for name, tensor in sd.items():
        got = restored[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name


def test_unpack_passes_a_plain_state_dict_through():
    sd = {"w": torch.ones(2)}
    assert unpack(sd)["w"] is sd["w"]


def test_tied_weights_travel_once():
    embed = torch.randn(16, 4)
    sd = {"embed_tokens.weight": embed, "lm_head.weight": embed, "norm.weight": torch.ones(4)}
    packed = pack(sd)
    assert packed["embed_tokens.weight"][0] is packed["lm_head.weight"][0]
    buffers = []
    payload = pickle.dumps(packed, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2  # out-of-band buffers: the shared embedding once, the norm once
    restored = unpack(pickle.loads(payload, buffers=buffers))
    assert torch.equal(restored["lm_head.weight"], embed) and torch.equal(restored["embed_tokens.weight"], embed)
    # Equal values in separate tensors are not merged.
    assert pack({"a": embed, "b": embed.clone()})["a"][0] is not pack({"a": embed, "b": embed.clone()})["b"][0]
