"""The reward-model trainer: one Ray Train worker (FSDP2 rank) of ``rayppo rm``.

The model is ``AutoModelForSequenceClassification`` with one output; its score of a sequence is
the logit at the last token that is not padding (how transformers pools, so the saved model
scores as it was trained). The loss is Bradley-Terry,

    -log sigmoid(r_chosen - r_rejected - margin)

averaged over pairs, plus optional centring ``center_coef * mean((r_chosen + r_rejected)^2)``:
the Bradley-Terry loss fixes only reward differences, the centring keeps their level near 0.

Every ``rm.eval_every`` steps the ranks score their share of the held-out pairs and reduce
pairwise accuracy (a tie counts half), also per pair category (``rm.group_key``), and the mean
margin ``r_chosen - r_rejected``. At the end
rank 0 writes the HF directory atomically with ``reward_stats.json`` (mean and std of the reward
over the training pairs' replies, which the ``model`` reward source uses to normalise).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import torch
import torch.nn.functional as F

from learners.models import resolve_dtype, shard
from learners.stage import EpochOrder, lr_factor, rank_device
from learners.stage_log import StageLog

Pair = tuple[list[int], list[int], float, str]
"""(chosen ids, rejected ids, margin, category; ``""`` for none)."""

STATS_FILE = "reward_stats.json"


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair ``-log sigmoid(r_chosen - r_rejected - margin)`` (``[n]``)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def pair_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None, center_coef: float
) -> torch.Tensor:
    """Mean Bradley-Terry loss over the pairs plus the centring term."""
    loss = bradley_terry_loss(r_chosen, r_rejected, margin).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair 1 when the chosen reply scores higher, 0.5 on a tie, else 0 (``[n]``)."""
    return (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()


def score_sequences(model, sequences: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """The model's reward of each right-padded sequence (``[n]``)."""
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, ids in enumerate(sequences):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    return logits[:, 0].float()


def score_pairs(model, pairs: list[Pair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected, margin)`` of ``pairs``, both sides in one forward."""
    rewards = score_sequences(model, [p[0] for p in pairs] + [p[1] for p in pairs], pad_id, device)
    margin = torch.tensor([p[2] for p in pairs], dtype=torch.float32, device=rewards.device)
    return rewards[: len(pairs)], rewards[len(pairs):], margin


def pair_groups(pairs: list[Pair]) -> list[str]:
    """The categories of ``pairs``, sorted (every rank derives the same order)."""
    return sorted({p[3] for p in pairs if p[3]})


def _rounds(n: int, world: int, batch: int) -> int:
    # Every rank runs the same number of forwards: FSDP2 all-gathers inside each one.
    return max(1, math.ceil(math.ceil(n / world) / batch))


@torch.no_grad()
def evaluate(model, pairs: list[Pair], pad_id: int, device, rank: int, world: int, batch: int, center_coef: float) -> dict:
    """Held-out pairwise accuracy (overall and ``rm/eval_accuracy/<category>``, with
    ``rm/eval_pairs/<category>``), mean margin and loss, reduced over the ranks."""
    import torch.distributed as dist

    # Every rank holds all the pairs, so every rank builds the same category order.
    slot = {g: 4 + 2 * i for i, g in enumerate(pair_groups(pairs))}
    mine = pairs[rank::world]
    # correct, margin sum, loss sum, count, then (correct, count) per category
    totals = torch.zeros(4 + 2 * len(slot), dtype=torch.float64)
    for r in range(_rounds(len(pairs), world, batch)):
        chunk = mine[r * batch : (r + 1) * batch]
        rc, rr, margin = score_pairs(model, chunk or pairs[:1], pad_id, device)
        if not chunk:
            continue
        correct = pairwise_accuracy(rc, rr)
        totals[:4] += torch.tensor([
            float(correct.sum()),
            float((rc - rr).sum()),
            float(bradley_terry_loss(rc, rr, margin).sum()),
            len(chunk),
        ], dtype=torch.float64)
        for pair, hit in zip(chunk, correct.tolist()):
            if pair[3]:
                totals[slot[pair[3]]] += hit
                totals[slot[pair[3]] + 1] += 1
    dist.all_reduce(totals)
    count = max(1.0, float(totals[3]))
    out = {
        "rm/eval_accuracy": float(totals[0]) / count,
        "rm/eval_margin": float(totals[1]) / count,
        "rm/eval_loss": float(totals[2]) / count,
    }
    for g, i in slot.items():
        out[f"rm/eval_accuracy/{g}"] = float(totals[i]) / max(1.0, float(totals[i + 1]))
        out[f"rm/eval_pairs/{g}"] = int(totals[i + 1])
    return out


@torch.no_grad()
def reward_stats(model, pairs: list[Pair], pad_id: int, device, rank: int, world: int, batch: int) -> dict:
    """Mean and std of the reward over every chosen and rejected reply of ``pairs``."""
    import torch.distributed as dist

    sequences = [p[0] for p in pairs] + [p[1] for p in pairs]
    mine = sequences[rank::world]
    totals = torch.zeros(3, dtype=torch.float64)  # sum, sum of squares, count
    for r in range(_rounds(len(sequences), world, batch)):
        chunk = mine[r * batch : (r + 1) * batch]
        rewards = score_sequences(model, chunk or sequences[:1], pad_id, device).double()
        if chunk:
            totals += torch.stack([rewards.sum(), (rewards ** 2).sum(), torch.tensor(float(len(chunk)), dtype=torch.float64)])
    dist.all_reduce(totals)
    count = float(totals[2])
    mean = float(totals[0]) / count
    std = math.sqrt(max(float(totals[1]) / count - mean * mean, 0.0))
    return {"mean": mean, "std": max(std, 1e-6), "count": int(count)}


def load_reward_model(path: str, dtype: torch.dtype, pad_id: int, trust_remote_code: bool):
    """``AutoModelForSequenceClassification(num_labels=1)`` from ``path``, pad id set so the
    head reads the last real token; a newly added head starts at zero (every reward 0)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code
    )
    model.config.pad_token_id = pad_id
    model.config.use_cache = False
    if "SequenceClassification" not in str(model.config.architectures):
        head = model.score if hasattr(model, "score") else model.classifier
        torch.nn.init.zeros_(head.weight)
        if getattr(head, "bias", None) is not None:
            torch.nn.init.zeros_(head.bias)
    model.config.architectures = [type(model).__name__]
    return model


def save_reward_model(full_state: dict, model, tokenizer_path: str, out: str, stats: dict) -> None:
    """Write ``out`` (HF directory + ``reward_stats.json``) as ``out.tmp`` and rename it."""
    from learners.checkpoint import export_hf

    tmp = out.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    export_hf(full_state, model.config, tokenizer_path, tmp)
    with open(os.path.join(tmp, STATS_FILE), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


    cfg = loop_config["cfg"]
    train, held_out, pad_id = loop_config["train"], loop_config["eval"], loop_config["pad_id"]
    rc = cfg.rm
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu, device = rank_device(cfg)
    model = load_reward_model(rc.base_path, resolve_dtype(cfg.model.dtype, on_gpu), pad_id, cfg.model.trust_remote_code)
    model.to(device)
    shard(model, on_gpu, mixed_precision=cfg.model.dtype == "auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, rc.warmup_steps, rc.steps))
    log = StageLog(rank, "rm", rc.log_dir, cfg, rc.steps, bar_keys=("rm/loss", "rm/eval_accuracy"))
    per_rank = rc.batch_size // world
    order = EpochOrder(len(train), rc.batch_size, cfg.seed)
    metrics: dict[str, float] = {}
    if held_out:
        log.log(0, evaluate(model, held_out, pad_id, device, rank, world, per_rank, rc.center_coef))
    for step in range(1, rc.steps + 1):
        mine = [train[i] for i in order.next_share(rank, world)]
        r_chosen, r_rejected, margin = score_pairs(model, mine, pad_id, device)
        # Every rank holds the same number of pairs, so FSDP2's gradient average is the mean
        # over the whole batch.
        loss = pair_loss(r_chosen, r_rejected, margin, rc.center_coef)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        r_chosen, r_rejected = r_chosen.detach(), r_rejected.detach()
        local = torch.tensor([
            float(loss.detach()),
            float(pairwise_accuracy(r_chosen, r_rejected).mean()),
            float((r_chosen - r_rejected).mean()),
            float((r_chosen + r_rejected).mean() / 2),
        ], dtype=torch.float64)
        dist.all_reduce(local)
        local /= world
        metrics = {
            "rm/loss": float(local[0]),
            "rm/accuracy": float(local[1]),
            "rm/margin": float(local[2]),
            "rm/reward_mean": float(local[3]),
            "rm/grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
            "rm/lr": scheduler.get_last_lr()[0],
        }
        if held_out and (step == rc.steps or (rc.eval_every and step % rc.eval_every == 0)):
            metrics.update(evaluate(model, held_out, pad_id, device, rank, world, per_rank, rc.center_coef))
        log.log(step, metrics)
        log.advance()
        if step % 20 == 0 or step == rc.steps:
            ray.train.report(dict(metrics, step=step))
    stats = reward_stats(model, train, pad_id, device, rank, world, max(per_rank, 8))
    stats["source"] = f"{len(train)} training pairs, chosen and rejected replies"
    if held_out:
        stats["eval"] = {
            "pairwise_accuracy": metrics["rm/eval_accuracy"],
            "mean_margin": metrics["rm/eval_margin"],
            "loss": metrics["rm/eval_loss"],
            "pairs": len(held_out),
        }
        by_group = {
            g: {"pairwise_accuracy": metrics[f"rm/eval_accuracy/{g}"], "pairs": metrics[f"rm/eval_pairs/{g}"]}
            for g in pair_groups(held_out)
        }
        if by_group:
            stats["eval"]["by_group"] = by_group
    log.log(rc.steps, {"rm/stats_mean": stats["mean"], "rm/stats_std": stats["std"]})
    log.close()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_reward_model(full, model, loop_config["tokenizer_path"], rc.output_dir, stats)
    dist.barrier()
    ray.train.report(dict(metrics, step=rc.steps, stats_mean=stats["mean"], stats_std=stats["std"]))
