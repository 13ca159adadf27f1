"""Which examples each step of a Ray Train stage (``rayppo sft``, ``rayppo rm``) reads."""

from __future__ import annotations

import random


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
