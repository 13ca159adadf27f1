"""Metrics of a Ray Train stage (``rayppo sft``, ``rayppo rm``), written by its rank 0.

The same sinks as the RL driver (:class:`pipeline.infra.tracking.MetricsLogger`: ``metrics.jsonl``
and W&B), and a progress bar that Ray draws on the driver's terminal
(``ray.experimental.tqdm_ray``), since a worker's own stderr reaches it only line by line.
Every other rank gets a logger that does nothing, so the loop calls it unconditionally.
"""

from __future__ import annotations

from typing import Optional

from pipeline.infra.tracking import MetricsLogger


class StageLog:
    def __init__(
        self,
        rank: int,
        stage: str,
        log_dir: Optional[str],
        cfg,
        total_steps: int,
        bar_keys: tuple[str, ...] = (),
    ) -> None:
        self.active = rank == 0
        self.bar_keys = bar_keys
        self.stage = stage
        self.logger = None
        self.bar = None
        if not self.active:
            return
        if log_dir:
            lc = cfg.logging
            self.logger = MetricsLogger(
                log_dir,
                f"{cfg.run_name}-{stage}",
                cfg.to_dict(),
                total_steps,
                wandb_mode=lc.wandb_mode,
                wandb_project=lc.wandb_project,
                progress_bar=False,
                wandb_group=lc.wandb_group,
            )
        if cfg.logging.progress_bar:
            from ray.experimental import tqdm_ray

            self.bar = tqdm_ray.tqdm(total=total_steps, desc=stage)
        self._shown: dict[str, float] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        if self.logger is not None:
            self.logger.log(step, metrics)
        self._shown.update((k, v) for k, v in metrics.items() if k in self.bar_keys)
        if self.bar is not None and self._shown:
            shown = " ".join(f"{k.rsplit('/', 1)[-1]}={v:.4g}" for k, v in self._shown.items())
            self.bar.set_description(f"{self.stage} {shown}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.logger is not None:
            self.logger.close()
