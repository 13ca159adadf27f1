"""``rayppo sft``: supervised warm start on reference answers.

Runs as a Ray Train ``TorchTrainer``: each worker is one FSDP2 rank (Ray Train sets up the
process group: gloo on CPU, NCCL on GPU). Loss covers the answer tokens and the closing
end-of-turn token only, so the model learns to answer and to stop.
"""

from __future__ import annotations

import math
import os
import random
import shutil

from pipeline.config import RayppoConfig


def build_examples(cfg: RayppoConfig, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + eos) pairs from the training split's reference answers."""
    from pipeline import data

    train_rows, _ = data.load_prompt_splits(cfg.data)
    rows = [r for r in train_rows if r.answer is not None][: cfg.sft.num_examples]
    if not rows:
        raise ValueError("sft: the training data has no reference answers (data.answer_key)")
    prompts = data.encode_prompts(tokenizer, rows, cfg.data.max_prompt_tokens)
    eos = tokenizer.eos_token_id
    return [
        (p, tokenizer.encode(str(r.answer), add_special_tokens=False) + [eos])
        for p, r in zip(prompts, rows)
    ]


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    from learners import losses
    from learners.batching import Samples, at_positions, collate
    from learners.checkpoint import export_hf
    from learners.models import load_policy, resolve_dtype, shard

    cfg: RayppoConfig = loop_config["cfg"]
    sc = cfg.sft
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu = torch.cuda.is_available() and cfg.resources.gpus_per_learner > 0
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    if not on_gpu:
        torch.set_num_threads(cfg.resources.torch_threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(sc.base_path, trust_remote_code=cfg.model.trust_remote_code)
    examples = build_examples(cfg, tokenizer)
    model = load_policy(sc.base_path, resolve_dtype(cfg.model.dtype, on_gpu), cfg.model.trust_remote_code)
    model.to(device)
    shard(model, on_gpu, mixed_precision=cfg.model.dtype == "auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=sc.lr, weight_decay=0.0, foreach=False)

    def lr_at(step: int) -> float:
        if step < sc.warmup_steps:
            return (step + 1) / sc.warmup_steps
        progress = (step - sc.warmup_steps) / max(1, sc.steps - sc.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    per_rank = sc.batch_size // world
    order_rng = random.Random(cfg.seed)
    order: list[int] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for step in range(sc.steps):
        if len(order) < sc.batch_size:
            fresh = list(range(len(examples)))
            order_rng.shuffle(fresh)
            order += fresh
        batch, order = order[: sc.batch_size], order[sc.batch_size :]
        mine = batch[rank * per_rank : (rank + 1) * per_rank]
        samples = Samples([examples[i][0] for i in mine], [examples[i][1] for i in mine], {})
        mb = collate(samples, pad_id, device)
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        logprobs = losses.logprobs_from_logits(at_positions(logits, mb.positions).float(), mb.response_ids)
        loss = -losses.masked_mean(logprobs, mb.response_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == sc.steps - 1:
            value = torch.tensor([loss.item()])
            dist.all_reduce(value)
            ray.train.report({"step": step, "loss": float(value.item()) / world})
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


def run_sft(cfg: RayppoConfig) -> str:
    """Train and save ``sft.output_dir``; returns its path."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from learners.models import model_dir_error
    from pipeline.ray_setup import init_ray

    problem = model_dir_error(cfg.sft.base_path)
    if problem:
        raise ValueError(f"sft.base_path: {problem}")
    if cfg.sft.batch_size % cfg.sft.num_workers:
        raise ValueError(
            f"sft.batch_size={cfg.sft.batch_size} must be divisible by sft.num_workers={cfg.sft.num_workers}"
        )
    cfg.sft.base_path = os.path.abspath(cfg.sft.base_path)
    cfg.sft.output_dir = os.path.abspath(cfg.sft.output_dir)
    # Ray Train workers run in their own directories: hand them absolute paths.
    cfg.data.train_files = [os.path.abspath(p) for p in cfg.data.train_files]
    cfg.data.eval_files = [os.path.abspath(p) for p in cfg.data.eval_files]
    init_ray(cfg)
    use_gpu = cfg.resources.gpus_per_learner > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg},
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
    loss = (result.metrics or {}).get("loss")
    print(f"sft: wrote {cfg.sft.output_dir}" + (f" (final loss {loss:.4f})" if loss is not None else ""))
    return cfg.sft.output_dir
