"""Workload W1: GRPO on seeded arithmetic prompts, same work for every system measured.

Both systems get the same locally built model (Qwen2 shape, random weights, tied embeddings,
byte-level BPE of about 1k tokens trained on the task text), the same prompt set, 8 samples per
prompt, completions forced to a fixed length (EOS ignored), KL to a frozen reference with
coefficient 0.04, one optimizer step per batch, the same learning rate, seed, precision and
thread count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from pipeline.config import DataConfig, InitModelConfig


@dataclass(frozen=True)
class Workload:
    name: str
    preset: str
    prompts: int
    """Prompts per step."""
    group: int
    """Samples per prompt (GRPO group size)."""
    completion_tokens: int
    """Tokens generated per sample, forced (EOS ignored)."""
    kl_coef: float = 0.04
    lr: float = 1e-5
    seed: int = 0
    bf16: bool = False
    """fp32 on CPU, bf16 (mixed precision) on GPU."""
    threads: int = 2
    """Intra-op threads every compute phase may use (CPU)."""

    @property
    def samples(self) -> int:
        return self.prompts * self.group

    @property
    def completion_tokens_per_step(self) -> int:
        return self.samples * self.completion_tokens

    def to_dict(self) -> dict:
        return asdict(self)


def workload(size: str, preset: str, on_gpu: bool, threads: int) -> Workload:
    """``size`` is ``cpu`` (16 prompts x 8 x 64 tokens) or ``gpu`` (64 x 8 x 256)."""
    if size == "cpu":
        return Workload(f"W1-cpu/{preset}", preset, 16, 8, 64, bf16=on_gpu, threads=threads)
    if size == "gpu":
        return Workload(f"W1-gpu/{preset}", preset, 64, 8, 256, bf16=on_gpu, threads=threads)
    raise ValueError(f"workload size {size!r}: expected 'cpu' or 'gpu'")


def data_config(seed: int = 0) -> DataConfig:
    """The prompt set: seeded two-digit arithmetic, enough rows for every step of a run."""
    return DataConfig(
        task="arithmetic", num_train=2000, num_eval=64, min_digits=2, max_digits=2, seed=seed,
        max_prompt_tokens=48,
    )


def model_dir(root: str, preset: str) -> str:
    """Build (once) the preset's random-weight model and its tokenizer under ``root``."""
    from pipeline.stages.init_model import ensure_model

    init = InitModelConfig(
        output_dir=os.path.join(root, preset), preset=preset, vocab_size=1024, corpus_size=5000
    )
    return ensure_model(init, data_config())


def param_count(path: str) -> int:
    """Parameters stored in a model directory (tied embeddings are stored, and counted, once)."""
    from safetensors import safe_open

    total = 0
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def step_flops(w: Workload, n_params: int, prompt_tokens: float) -> dict[str, float]:
    """Arithmetic work of one step (matmul FLOPs, 2 per multiply-add; attention ignored).

    Training: 6N per token (forward + backward); reference: 2N per token; generation: 2N per
    generated token. Every completion token counts; a prompt counts once per prompt, not once
    per sample: its samples only need its keys/values, so that is the least work a step needs.
    """
    seq_tokens = w.prompts * prompt_tokens + w.samples * w.completion_tokens
    generated = w.completion_tokens_per_step + w.prompts * prompt_tokens
    return {
        "train": 6.0 * n_params * seq_tokens,
        "reference": 2.0 * n_params * seq_tokens,
        "generate": 2.0 * n_params * generated,
    }
