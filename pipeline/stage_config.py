"""Config sections of the stages before RL: ``init`` (``rayppo init-model``) and ``sft``
(``rayppo sft``); ``rm`` lives with the chat sections in :mod:`pipeline.chat_config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class InitModelConfig:
    """How ``rayppo init-model`` builds a small model and tokenizer locally (no hub needed)."""

    output_dir: str = "runs/debug/base"
    """Directory the randomly initialised HF model and its tokenizer are saved to."""
    architecture: str = "qwen2"
    """Model family of the config: ``qwen2`` or ``llama``."""
    preset: str = "tiny"
    """Size preset: ``tiny`` (2 layers, hidden 128), ``debug`` (4 layers, hidden 256),
    ``small`` (8 layers, hidden 512) or ``0.5b`` (the Qwen2.5-0.5B shape)."""
    num_layers: Optional[int] = None
    """Depth of the model instead of the preset's (its widths kept); ``None``: the preset's."""
    vocab_size: int = 1024
    """Target vocabulary size of the byte-level BPE tokenizer trained on the task text."""
    corpus_size: int = 20000
    """Number of task texts (prompt + answer) the tokenizer is trained on."""
    seed: int = 0
    """Seed of the random weight initialisation."""



@dataclass
class SFTConfig:
    """``rayppo sft``: supervised warm start on conversations or reference answers (Ray Train +
    FSDP2). The loss covers every assistant turn, end-of-turn token included."""

    base_path: str = "runs/debug/base"
    """Model the SFT starts from (HF dir or hub id)."""
    output_dir: str = "runs/debug/sft"
    """Where the fine-tuned HF directory is written."""
    num_workers: int = 2
    """Ray Train workers (FSDP2 ranks)."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per optimizer step across all workers."""
    lr: float = 1e-3
    """Peak learning rate (cosine decay after warm-up)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    num_examples: int = 2000
    """Training examples drawn from the task / train files."""
    train_files: list[str] = field(default_factory=list)
    """Conversation files (``{"messages": [...]}`` with one or more assistant turns, or
    prompt/answer rows; keys ``data.messages_key`` / ``prompt_key`` / ``answer_key``). Empty: the
    task's demonstrations (``data.task: support``) or the prompt rows' answers."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out conversations whose loss is reported; empty: the support task's held-out
    demonstrations, else none."""
    max_length: int = 512
    """Conversations longer than this many tokens are cut to it (counted when that happens)."""
    eval_every: int = 0
    """Report the held-out loss every this many steps (0: only at the end)."""
    log_dir: Optional[str] = None
    """Directory of the stage's ``metrics.jsonl`` (and W&B run); ``None``: no metrics file."""
    adam_beta2: float = 0.999
    """AdamW's second-moment decay. 0.95 adapts faster to the sudden loss drops of small models
    learning to copy (the support task's SFT uses it)."""
