"""rayppo on workload W1, one ``Trainer.step`` at a time (the harness alternates systems)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from benchmarks.w1 import Workload, data_config
from pipeline.config import RayppoConfig, load_config


def rayppo_config(w: Workload, model_path: str, run_dir: str, *overrides: str) -> RayppoConfig:
    """W1 as a rayppo config. The roles run one after another, so each may use all threads:
    one learner rank with ``w.threads`` torch threads, one engine with as many."""
    data = asdict(data_config(w.seed))
    base = [
        f"model.path={model_path}",
        f"model.dtype={'auto' if w.bf16 else 'float32'}",
        f"seed={w.seed}",
        f"prompts_per_step={w.prompts}",
        "eval_every=0",
        *(f"data.{k}={v}" for k, v in data.items() if k in ("task", "num_train", "num_eval",
                                                             "min_digits", "max_digits", "seed",
                                                             "max_prompt_tokens")),
        f"rollout.n_samples={w.group}",
        f"rollout.max_tokens={w.completion_tokens}",
        "rollout.ignore_eos=true",
        "rollout.temperature=1.0",
        "rollout.kv_cache_gib=1",
        # Compiled decode: a slower start, faster generation (measured: --variant eager=...).
        "rollout.enforce_eager=false",
        "rollout.verify_every=1",
        f"rollout.torch_threads={w.threads}",
        "learner.num_ranks=1",
        # One CPU rank as plain modules, the setting of the published table (the FSDP2-wrapped
        # single rank is measured beside it as --variant fsdp=learner.fsdp_single_rank=true).
        "learner.fsdp_single_rank=false",
        f"learner.lr={w.lr}",
        f"learner.seed={w.seed}",
        "learner.ppo_epochs=1",
        "learner.mini_batches=1",
        "algorithm.advantage=grpo",
        f"algorithm.kl_coef={w.kl_coef}",
        "algorithm.kl_mode=loss",
        "algorithm.kl_estimator=k3",
        f"resources.torch_threads={w.threads}",
        "resources.local_num_cpus=16",  # logical: several runners coexist, taking turns,
        f"checkpoint.dir={os.path.join(run_dir, 'checkpoints')}",
        "checkpoint.every_steps=0",
        "checkpoint.export_dir=null",
        f"logging.dir={os.path.join(run_dir, 'logs')}",
        "logging.wandb_mode=disabled",
        "logging.progress_bar=false",
    ]
    if w.bf16:
        # One GPU shared by the colocated learner and engine; bigger micro-batches keep it busy.
        base += ["resources.gpus_per_learner=0.5", "resources.gpus_per_rollout_worker=0.4",
                 "rollout.gpu_memory_utilization=0.35", "learner.micro_batch_tokens=16384"]
    return load_config(None, base + list(overrides))


class RayppoRunner:
    """A set-up :class:`pipeline.stages.train.Trainer`; ``step()`` times one RL step."""

    name = "rayppo"

    def __init__(self, cfg: RayppoConfig):
        from pipeline.stages.train import Trainer

        self.cfg = cfg
        start = time.perf_counter()
        self.trainer = Trainer(cfg)
        self.trainer.setup()
        self.setup_seconds = time.perf_counter() - start

    def step(self) -> dict:
        start = time.perf_counter()
        metrics = self.trainer.step()
        seconds = time.perf_counter() - start
        phases = {k[len("time/"):]: v for k, v in metrics.items() if k.startswith("time/")}
        keep = ("sync/seconds", "sync/gather_seconds", "sync/load_seconds", "sync/check_seconds", "sync/probe_diff",
                "reward/mean", "kl/mean", "actor/kl_loss", "response/length_mean")
        return {"seconds": seconds, "phases": phases, **{k: metrics[k] for k in keep if k in metrics}}

    def close(self) -> None:
        self.trainer.shutdown()
