"""The SFT trainer: one Ray Train worker (FSDP2 rank) of ``rayppo sft``.

Every rank reads the same token ids (checked and tokenized by :mod:`pipeline.stages.sft` before Ray
starts) and trains on its slice of each batch; the loss is the token mean of the negative
log-likelihood over every assistant token of the whole batch. At the end rank 0 writes the HF
directory as ``sft.output_dir.tmp`` and renames it.
"""

from __future__ import annotations

import math
import os
import shutil

from learners.stage import EpochOrder, lr_factor, rank_device
from learners.stage_log import StageLog

Example = tuple[list[int], list[int]]
"""(token ids, assistant mask) of one conversation."""


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


def token_nll(model, examples: list[Example], pad_id: int, device, chunk: int = 0):
    """Summed negative log-likelihood of the assistant tokens, their count, and how many of them
    the model's argmax predicts (tensors, for all-reduce). ``chunk > 0``: the head runs that many
    tokens at a time (:mod:`learners.head`), never on the whole batch's logits."""
    import torch

    from learners.head import chunking_unsupported, final_hidden, token_logprobs
    from learners.losses import logprobs_from_logits

    input_ids, attention, loss_mask = (t.to(device) for t in collate_examples(examples, pad_id))
    targets, mask = input_ids[:, 1:], loss_mask[:, 1:]
    if chunk > 0 and chunking_unsupported(model) is None:
        hidden, _ = final_hidden(model, input_ids=input_ids, attention_mask=attention)
        stats = token_logprobs(model, hidden[:, :-1], targets, chunk, hits=True)
        logprobs, predicted = stats.logprobs, stats.hits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        logprobs = logprobs_from_logits(logits, targets)
        predicted = (logits.argmax(-1) == targets).float()
    nll = -torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)).sum()
    hits = (predicted * mask).sum()
    return nll, mask.sum(), hits


def evaluate(model, examples: list[Example], pad_id: int, device, rank: int, world: int, batch: int,
             logits_chunk: int = 0) -> dict:
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
            nll, count, hits = token_nll(model, chunk, pad_id, device, logits_chunk)
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

    cfg = loop_config["cfg"]
    examples, eval_examples = loop_config["examples"], loop_config["eval_examples"]
    pad_id = loop_config["pad_id"]
    sc = cfg.sft
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu, device = rank_device(cfg)
    model = load_policy(sc.base_path, resolve_dtype(cfg.model.dtype, on_gpu), cfg.model.trust_remote_code)
    model.to(device)
    shard(model, on_gpu, mixed_precision=cfg.model.dtype == "auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=sc.lr, betas=(0.9, sc.adam_beta2), weight_decay=0.0, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, sc.warmup_steps, sc.steps))
    log = StageLog(rank, "sft", sc.log_dir, cfg, sc.steps, bar_keys=("sft/loss", "sft/eval_loss"))
    per_rank = sc.batch_size // world
    order = EpochOrder(len(examples), sc.batch_size, cfg.seed)
    metrics: dict[str, float] = {}
    for step in range(1, sc.steps + 1):
        mine = [examples[i] for i in order.next_share(rank, world)]
        nll, count, _ = token_nll(model, mine, pad_id, device, sc.logits_chunk_tokens)
        total = count.detach().clone()
        dist.all_reduce(total)
        # FSDP2 averages gradients over ranks: scaling by world makes this the token mean over
        # the whole batch, however its assistant tokens fall among the ranks.
        (nll / total.clamp_min(1) * world).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        summed = torch.stack([nll.detach(), count]).cpu()
        dist.all_reduce(summed)
        metrics = {
            "sft/loss": float(summed[0] / summed[1]),
            "sft/grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
            "sft/lr": scheduler.get_last_lr()[0],
        }
        if eval_examples and (step == sc.steps or (sc.eval_every and step % sc.eval_every == 0)):
            metrics.update(evaluate(model, eval_examples, pad_id, device, rank, world, per_rank, sc.logits_chunk_tokens))
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
