"""Micro-benchmarks measured in the same run as the W1 comparison.

* rollout engines (vLLM vs transformers) tokens/s on the same prompts and sampling;
* learner training tokens/s (and the fraction of the measured matmul peak: MFU);
* weight sync seconds and GB/s against model size;
* step time against tokens per step and against the number of rollout workers.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from benchmarks.compare import timed
from benchmarks.w1 import Workload, step_flops
from rollout_workers.types import Sampling


def w1_sampling(w: Workload, completion_tokens: int | None = None) -> Sampling:
    return Sampling(n=w.group, temperature=1.0, top_p=1.0,
                    max_tokens=completion_tokens or w.completion_tokens, ignore_eos=True)


def engine_rate(rollouts, prompt_ids: list[list[int]], sampling: Sampling, repeats: int) -> dict:
    """Generated tokens per second of a :class:`RolloutGroup` on ``prompt_ids``."""
    tokens = len(prompt_ids) * sampling.n * sampling.max_tokens
    median, times = timed(lambda: rollouts.generate(prompt_ids, sampling, step=0), repeats)
    return {"seconds": median, "times": times, "tokens": tokens, "tokens_per_s": tokens / median}


def engines(cfg, w: Workload, prompt_ids: list[list[int]], vllm_rollouts, repeats: int) -> list[dict]:
    """vLLM (the run's own engine) and a transformers engine started with the same settings."""
    import copy

    from rollout_workers.group import RolloutGroup

    sampling = w1_sampling(w)
    out = [{"engine": "vllm", **engine_rate(vllm_rollouts, prompt_ids, sampling, repeats)}]
    hf_cfg = copy.deepcopy(cfg)
    hf_cfg.rollout.engine = "hf"
    hf = RolloutGroup(hf_cfg, cfg.model.path)
    try:
        out.append({"engine": "hf", **engine_rate(hf, prompt_ids, sampling, repeats)})
    finally:
        hf.shutdown()
    return out


def learner_rate(w: Workload, n_params: int, prompt_tokens: float, update_s: float,
                 reference_s: float, peak_gflops: float) -> dict:
    """Training tokens/s of the update phase (every sample's prompt + completion), and its
    model-FLOPs utilisation of the peak (the least FLOPs of the update, :func:`step_flops`)."""
    flops = step_flops(w, n_params, prompt_tokens)
    tokens = w.samples * (prompt_tokens + w.completion_tokens)
    return {
        "train_tokens_per_s": tokens / update_s,
        "update_gflops": flops["train"] / update_s / 1e9,
        "mfu": flops["train"] / update_s / (peak_gflops * 1e9),
        "reference_tokens_per_s": tokens / reference_s if reference_s else None,
    }


def probe_cost(rollouts, prompt_ids: list[list[int]], sampling: Sampling, probe, repeats: int) -> dict:
    """What the probe check adds to ``generate``: the same call with and without the probe
    sequences, taken in turns; medians of each."""
    plain, with_probe = [], []
    rollouts.generate(prompt_ids, sampling, step=0, probe=probe)  # warm-up
    for _ in range(repeats):
        for times, p in ((plain, None), (with_probe, probe)):
            start = time.perf_counter()
            rollouts.generate(prompt_ids, sampling, step=0, probe=p)
            times.append(time.perf_counter() - start)
    a, b = statistics.median(plain), statistics.median(with_probe)
    return {"generate_s": a, "generate_with_probe_s": b, "probe_in_generate_s": b - a}


def weight_sync(preset: str, n_params: int, bytes_per_param: int, summary: dict,
                probe: dict | None = None) -> dict:
    """Seconds and GB/s of a learner -> engine sync, and what verifying it costs the step: the
    sync phase, the probe's share of ``generate`` (``probe``, from :func:`probe_cost`) and the
    wait for the learner's probe scores."""
    sync_s = summary.get("sync/seconds")
    phase_s = summary.get("phases_median_s", {}).get("sync")
    check_s = summary.get("sync/check_seconds", 0.0)
    in_generate = max(probe["probe_in_generate_s"], 0.0) if probe else None
    size_gb = n_params * bytes_per_param / 1e9
    verified_s = phase_s + check_s + (in_generate or 0.0) if phase_s is not None else None
    return {
        "preset": preset,
        "params": n_params,
        "size_gb": size_gb,
        "sync_s": sync_s,
        "gb_per_s": size_gb / sync_s if sync_s else None,
        "gather_s": summary.get("sync/gather_seconds"),
        "load_s": summary.get("sync/load_seconds"),
        "sync_phase_s": phase_s,
        "check_s": check_s,
        "probe_in_generate_s": in_generate,
        "verified_sync_s": verified_s,
        "fraction_of_step": verified_s / summary["median_s"] if verified_s is not None else None,
        "probe_diff": summary.get("sync/probe_diff"),
    }


def scale_tokens(runner, w: Workload, sizes: list[tuple[int, int]], steps: int,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Step time at several (prompts, completion tokens) sizes on one live rayppo runner.

    Sizes must not exceed the runner's own: the engine's context was sized for them.
    """
    trainer = runner.trainer
    rc, stream = trainer.cfg.rollout, trainer.stream
    original = (stream.batch_size, rc.max_tokens)
    out = []
    try:
        for prompts, completion in sizes:
            stream.batch_size, rc.max_tokens = prompts, completion
            runner.step()  # warm-up at this size
            results = [runner.step() for _ in range(steps)]
            median = statistics.median(r["seconds"] for r in results)
            tokens = prompts * w.group * completion
            phases = {k: statistics.median(r["phases"][k] for r in results) for k in results[0]["phases"]}
            out.append({"prompts": prompts, "completion_tokens": completion,
                        "tokens_per_step": tokens, "median_s": median,
                        "tokens_per_s": tokens / median, "phases_median_s": phases})
            log(f"  {tokens} tokens/step: {median:.2f} s")
    finally:
        stream.batch_size, rc.max_tokens = original
    return out
