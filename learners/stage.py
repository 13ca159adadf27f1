"""What the workers of the Ray Train stages (``rayppo sft``, ``rayppo rm``) share: the rank's
device, the order of the examples, the learning-rate schedule."""

from __future__ import annotations

import math
import random


def rank_device(cfg):
    """``(on_gpu, device)`` of this rank, with torch's threads and seed set from ``cfg``."""
    import ray.train
    import torch

    on_gpu = torch.cuda.is_available() and cfg.resources.gpus_per_learner > 0
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    if not on_gpu:
        torch.set_num_threads(cfg.resources.torch_threads)
    torch.manual_seed(cfg.seed)
    return on_gpu, device


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class EpochOrder:
    """Batches of example indices: the data is reshuffled (seeded) each time it runs out, and
    every rank takes the same-sized slice of each batch, so the ranks' shares add up to it."""

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.pending: list[int] = []

    def next_share(self, rank: int, world: int) -> list[int]:
        """The indices ``rank`` of ``world`` trains on this step (``batch_size // world``)."""
        if len(self.pending) < self.batch_size:
            fresh = list(range(self.num_examples))
            self.rng.shuffle(fresh)
            self.pending += fresh
        batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
        per_rank = self.batch_size // world
        return batch[rank * per_rank : (rank + 1) * per_rank]
