"""``rayppo sft``: supervised fine-tuning on conversations.

Runs as a Ray Train ``TorchTrainer``: each worker is one FSDP2 rank (Ray Train sets up the
process group: gloo on CPU, NCCL on GPU). Every example is a conversation rendered with the
model's chat template (:func:`pipeline.conversations.encode_conversation`); the loss covers
every assistant turn and its end-of-turn token, so the model learns to answer and to stop.

Examples come from ``sft.train_files`` (conversations or prompt/answer rows), else from the
built-in task: the support task's mixed-quality demonstrations, or the prompt rows' reference
answers as single-turn conversations. They are loaded, checked and tokenized on the driver
before Ray starts, so a bad row fails with its file, row and field and no worker is started.
"""

from __future__ import annotations

import math
import os
import random
import shutil

from pipeline.config import RayppoConfig
from pipeline.conversations import Conversation

Example = tuple[list[int], list[int]]
"""(token ids, assistant mask) of one conversation."""


def _task_conversations(cfg: RayppoConfig, split: str) -> list[Conversation]:
    from pipeline import data, tasks

    if cfg.data.task == "support":
        from pipeline.envs import support

        dc = cfg.data
        train, eval_ = tasks.split_rows("support", dc.num_train, dc.num_eval, dc.seed)
        rows = train[: cfg.sft.num_examples] if split == "train" else eval_
        # Demonstrations are drawn with their own seed: the prompts are the RL stage's, the
        # replies are what annotators wrote for them.
        convs = support.sft_conversations(rows, dc.seed + (1 if split == "train" else 2))
        return [Conversation(c["messages"], f"task support {split} #{i}") for i, c in enumerate(convs, 1)]
    if cfg.data.task == "memory":  # scripted dialogues of mixed quality, several assistant turns
        from pipeline.envs import memory

        dc = cfg.data
        convs = memory.task_conversations(dc.num_train, dc.num_eval, dc.seed, cfg.sft.num_examples, split)
        return [Conversation(c["messages"], f"task memory {split} #{i}") for i, c in enumerate(convs, 1)]
    if split != "train":
        return []
    rows = [r for r in data.load_prompt_splits(cfg.data)[0] if r.answer is not None]
    if not rows:
        raise ValueError("sft: the training data has no reference answers (data.answer_key)")
    return [
        Conversation(r.messages + [{"role": "assistant", "content": str(r.answer)}], r.source)
        for r in rows[: cfg.sft.num_examples]
    ]


def load_conversations(cfg: RayppoConfig, split: str) -> list[Conversation]:
    """The ``train`` or ``eval`` conversations of ``cfg``'s SFT stage."""
    from pipeline import conversations

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
    from pipeline.conversations import encode_conversation

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


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def collate_examples(examples: list[Example], pad_id: int):
    """``(input_ids, attention_mask, loss_mask)``, right-padded; ``loss_mask[b, t]`` is 1 where
    token ``t`` is an assistant token (the logits at ``t - 1`` predict it)."""
    import torch

    longest = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), longest), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), longest), dtype=torch.float32)
    for i, (ids, mask) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        loss_mask[i, : len(ids)] = torch.tensor(mask, dtype=torch.float32)
    loss_mask[:, 0] = 0.0
    return input_ids, attention, loss_mask


def token_nll(model, examples: list[Example], pad_id: int, device):
    """Summed negative log-likelihood of the assistant tokens, their count, and how many of them
    the model's argmax predicts (tensors, for all-reduce)."""
    import torch

    from learners.losses import logprobs_from_logits

    input_ids, attention, loss_mask = (t.to(device) for t in collate_examples(examples, pad_id))
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets, mask = input_ids[:, 1:], loss_mask[:, 1:]
    logprobs = logprobs_from_logits(logits, targets)
    nll = -torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)).sum()
    hits = ((logits.argmax(-1) == targets).float() * mask).sum()
    return nll, mask.sum(), hits


def evaluate(model, examples: list[Example], pad_id: int, device, rank: int, world: int, batch: int) -> dict:
    """Held-out per-token loss and next-token accuracy on assistant tokens (all ranks)."""
    import torch
    import torch.distributed as dist

    mine = examples[rank::world]
    totals = torch.zeros(3)
    # Every rank runs the same number of forwards (FSDP2 all-gathers in each).
    rounds = math.ceil(math.ceil(len(examples) / world) / batch)
    with torch.no_grad():
        for r in range(rounds):
            chunk = mine[r * batch : (r + 1) * batch] or examples[:1]
            nll, count, hits = token_nll(model, chunk, pad_id, device)
            if mine[r * batch : (r + 1) * batch]:
                totals += torch.stack([nll, count, hits]).cpu()
    dist.all_reduce(totals)
    return {"sft/eval_loss": float(totals[0] / totals[1]), "sft/eval_token_accuracy": float(totals[2] / totals[1])}


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from learners.checkpoint import export_hf
    from learners.models import load_policy, resolve_dtype, shard
    from learners.stage_log import StageLog

    cfg: RayppoConfig = loop_config["cfg"]
    examples, eval_examples = loop_config["examples"], loop_config["eval_examples"]
    pad_id = loop_config["pad_id"]
    sc = cfg.sft
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu = torch.cuda.is_available() and cfg.resources.gpus_per_learner > 0
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    if not on_gpu:
        torch.set_num_threads(cfg.resources.torch_threads)
    torch.manual_seed(cfg.seed)
    model = load_policy(sc.base_path, resolve_dtype(cfg.model.dtype, on_gpu), cfg.model.trust_remote_code)
    model.to(device)
    shard(model, on_gpu, mixed_precision=cfg.model.dtype == "auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=sc.lr, betas=(0.9, sc.adam_beta2), weight_decay=0.0, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, sc.warmup_steps, sc.steps))
    log = StageLog(rank, "sft", sc.log_dir, cfg, sc.steps, bar_keys=("sft/loss", "sft/eval_loss"))
    per_rank = sc.batch_size // world
    order_rng = random.Random(cfg.seed)
    order: list[int] = []
    metrics: dict[str, float] = {}
    for step in range(1, sc.steps + 1):
        if len(order) < sc.batch_size:
            fresh = list(range(len(examples)))
            order_rng.shuffle(fresh)
            order += fresh
        batch, order = order[: sc.batch_size], order[sc.batch_size :]
        mine = [examples[i] for i in batch[rank * per_rank : (rank + 1) * per_rank]]
        nll, count, _ = token_nll(model, mine, pad_id, device)
        total = count.detach().clone()
        dist.all_reduce(total)
        # FSDP2 averages gradients over ranks: scaling by world makes this the token mean over
        # the whole batch, however its assistant tokens fall among the ranks.
        (nll / total.clamp_min(1) * world).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        summed = torch.stack([nll.detach(), count]).cpu()
        dist.all_reduce(summed)
        metrics = {"sft/loss": float(summed[0] / summed[1]), "sft/lr": scheduler.get_last_lr()[0]}
        if eval_examples and (step == sc.steps or (sc.eval_every and step % sc.eval_every == 0)):
            metrics.update(evaluate(model, eval_examples, pad_id, device, rank, world, per_rank))
        log.log(step, metrics)
        log.advance()
        if step % 20 == 0 or step == sc.steps:
            ray.train.report({"step": step, "loss": metrics["sft/loss"], **metrics})
    log.close()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        tmp = sc.output_dir.rstrip("/") + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        export_hf(full, model.config, sc.base_path, tmp)
        if os.path.exists(sc.output_dir):
            shutil.rmtree(sc.output_dir)
        os.rename(tmp, sc.output_dir)
    dist.barrier()


def prepare(cfg: RayppoConfig) -> tuple[list[Example], list[Example], int]:
    """Checks and data of the stage, before Ray starts: (train examples, eval examples, pad id)."""
    from transformers import AutoTokenizer

    from learners.models import model_dir_error

    problem = model_dir_error(cfg.sft.base_path)
    if problem:
        raise ValueError(f"sft.base_path: {problem}")
    from pipeline import preflight

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

    from pipeline.ray_setup import init_ray

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
