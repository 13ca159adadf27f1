"""``rayppo sft``: supervised fine-tuning on conversations.

Runs as a Ray Train ``TorchTrainer``: each worker is one FSDP2 rank (Ray Train sets up the
process group: gloo on CPU, NCCL on GPU). Every example is a conversation rendered with the
model's chat template (:func:`pipeline.data.conversations.encode_conversation`); the loss covers
every assistant turn and its end-of-turn token, so the model learns to answer and to stop.

Examples come from ``sft.train_files`` (conversations or prompt/answer rows), else from the
built-in task: its demonstrations when it has them (``Task.sft_conversations``: the support
task's mixed-quality replies, the memory task's dialogues), or the prompt rows' reference
answers as single-turn conversations. They are loaded, checked and tokenized on the driver
before Ray starts, so a bad row fails with its file, row and field and no worker is started.
"""

from __future__ import annotations

import os

from learners.sft_trainer import Example, train_loop_per_worker
from pipeline import tasks
from pipeline.config import RayppoConfig
from pipeline.data import conversations
from pipeline.data.conversations import Conversation, encode_conversation


def _task_conversations(cfg: RayppoConfig, split: str) -> list[Conversation]:
    task = tasks.get(cfg.data.task) if cfg.data.task is not None else None
    if task is not None and task.sft_conversations is not None:
        return task.sft_conversations(cfg, split)
    if split != "train":
        return []
    rows = [r for r in tasks.prompt_splits(cfg.data)[0] if r.answer is not None]
    if not rows:
        raise ValueError("sft: the training data has no reference answers (data.answer_key)")
    return [
        Conversation(r.messages + [{"role": "assistant", "content": str(r.answer)}], r.source)
        for r in rows[: cfg.sft.num_examples]
    ]


def load_conversations(cfg: RayppoConfig, split: str) -> list[Conversation]:
    """The ``train`` or ``eval`` conversations of ``cfg``'s SFT stage."""
    files = cfg.sft.train_files if split == "train" else cfg.sft.eval_files
    if not files:
        return _task_conversations(cfg, split)
    dc = cfg.data
    out: list[Conversation] = []
    for path in files:
        out += conversations.load_conversations(path, dc.messages_key, dc.prompt_key, dc.answer_key)
    return out[: cfg.sft.num_examples] if split == "train" else out


def encode_examples(tokenizer, convs: list[Conversation], max_length: int) -> tuple[list[Example], int]:
    """Tokenized conversations cut to ``max_length``, and how many were cut. A conversation
    left without an assistant token after the cut is dropped (it would teach nothing)."""
    examples, cut = [], 0
    for conv in convs:
        try:
            ids, mask = encode_conversation(tokenizer, conv.messages)
        except ValueError as err:
            raise ValueError(f"{conv.source}: {err}") from None
        if len(ids) > max_length:
            cut += 1
            ids, mask = ids[:max_length], mask[:max_length]
        if any(mask[1:]):  # the first token is never predicted
            examples.append((ids, mask))
    return examples, cut


def build_examples(cfg: RayppoConfig, tokenizer) -> list[Example]:
    """The training examples of ``cfg`` (see :func:`load_conversations`)."""
    examples, _ = encode_examples(tokenizer, load_conversations(cfg, "train"), cfg.sft.max_length)
    if not examples:
        raise ValueError("sft: no training conversation has an assistant token within sft.max_length")
    return examples


def prepare(cfg: RayppoConfig) -> tuple[list[Example], list[Example], int]:
    """Checks and data of the stage, before Ray starts: (train examples, eval examples, pad id)."""
    from transformers import AutoTokenizer

    from learners.models import model_dir_error

    problem = model_dir_error(cfg.sft.base_path)
    if problem:
        raise ValueError(f"sft.base_path: {problem}")
    from pipeline.controller import preflight

    preflight.check_sft(cfg)  # config.json parses, output_dir / log_dir are not files
    if cfg.sft.batch_size % cfg.sft.num_workers:
        raise ValueError(
            f"sft.batch_size={cfg.sft.batch_size} must be divisible by sft.num_workers={cfg.sft.num_workers}"
        )
    tokenizer = AutoTokenizer.from_pretrained(cfg.sft.base_path, trust_remote_code=cfg.model.trust_remote_code)
    examples, cut = encode_examples(tokenizer, load_conversations(cfg, "train"), cfg.sft.max_length)
    if not examples:
        raise ValueError("sft: no training conversation has an assistant token within sft.max_length")
    eval_examples, eval_cut = encode_examples(tokenizer, load_conversations(cfg, "eval"), cfg.sft.max_length)
    if cut or eval_cut:
        print(f"sft: {cut} training and {eval_cut} held-out conversations cut to sft.max_length={cfg.sft.max_length} tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return examples, eval_examples, pad_id if pad_id is not None else 0


def run_sft(cfg: RayppoConfig) -> str:
    """Train and save ``sft.output_dir``; returns its path."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.controller.ray_setup import init_ray

    cfg.sft.base_path = os.path.abspath(cfg.sft.base_path)
    cfg.sft.output_dir = os.path.abspath(cfg.sft.output_dir)
    if cfg.sft.log_dir:
        cfg.sft.log_dir = os.path.abspath(cfg.sft.log_dir)
    examples, eval_examples, pad_id = prepare(cfg)
    init_ray(cfg)
    use_gpu = cfg.resources.gpus_per_learner > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "examples": examples, "eval_examples": eval_examples, "pad_id": pad_id},
        scaling_config=ScalingConfig(
            num_workers=cfg.sft.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.resources.cpus_per_learner, **({"GPU": cfg.resources.gpus_per_learner} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name="sft",
            storage_path=os.path.abspath(os.path.join(os.path.dirname(cfg.sft.output_dir), "ray_results")),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    final = result.metrics or {}
    shown = ", ".join(f"{k} {final[k]:.4f}" for k in ("sft/loss", "sft/eval_loss", "sft/eval_token_accuracy") if k in final)
    print(f"sft: wrote {cfg.sft.output_dir}" + (f" ({shown})" if shown else ""))
    return cfg.sft.output_dir
