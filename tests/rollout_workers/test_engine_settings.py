"""Engine settings that the benchmarks rely on: forced completion length and engine threads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.config import load_config


def test_ignore_eos_reaches_the_engines_sampling():
    from pipeline.stages.train import Trainer

    for flag in (True, False):
        cfg = load_config(None, [f"rollout.ignore_eos={str(flag).lower()}", "rollout.max_tokens=7"])
        sampling = Trainer._sampling(SimpleNamespace(cfg=cfg))
        assert sampling.ignore_eos is flag and sampling.max_tokens == 7


def test_engine_threads_are_validated_and_applied():
    from rollout_workers.vllm_engine import set_cpu_threads

    with pytest.raises(ValueError, match="rollout.torch_threads"):
        load_config(None, ["rollout.torch_threads=-1"])
    before = torch.get_num_threads()
    try:
        set_cpu_threads(0)  # 0 keeps what the process has
        assert torch.get_num_threads() == before
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sampled_token_logprobs_read_from_both_vllm_layouts():
    from vllm import SamplingParams
    from vllm.logprobs import FlatLogprobs, Logprob

    from rollout_workers.vllm_engine import _fast_output_options, token_logprobs

    # Position 1 also lists a top-k alternative before the sampled token.
    positions = [{7: Logprob(-0.5, 1, None)}, {3: Logprob(-0.1, 1, None), 9: Logprob(-2.0, 4, None)}]
    flat = FlatLogprobs()
    flat.extend(positions)
    for entries in (positions, flat, flat[0:]):
        assert token_logprobs([7, 9], entries) == [-0.5, -2.0]
    # The engine asks for neither text nor per-token dicts; the options are accepted.
    options = _fast_output_options(SamplingParams)
    assert options["detokenize"] is False
    SamplingParams(logprobs=0, **options)


def test_cpu_engines_prefill_whole_prompts_up_to_the_context_length(tiny_model, tmp_path):
    from rollout_workers.vllm_engine import whole_prefill_options

    assert whole_prefill_options(tiny_model, 8192, False) == {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}
    assert whole_prefill_options(tiny_model, 256, False)["max_num_batched_tokens"] == 4096
    # No max_model_len (the judge's default): the model's own context, from its config.
    assert whole_prefill_options(tiny_model, None, False)["max_num_batched_tokens"] == 4096  # tiny: 512 positions
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 10000}))
    assert whole_prefill_options(str(tmp_path), None, False)["max_num_batched_tokens"] == 10000
