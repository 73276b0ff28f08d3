"""The order in which a run reads its training data: `Stream`, an endless, resumable stream of
micro-batches. Training and the teacher-states job both read through it, so a run and the states
computed for it see the same micro-batches in the same order."""

from __future__ import annotations

import os

import torch

from kdbench.errors import KDBenchError


class Stream:
    """The endless stream of dataset micro-batches (lists of examples) from position `start`: epoch e
    is a fresh permutation seeded by (seed, e), so the stream can be resumed at any position exactly."""

    def __init__(self, examples: list[dict], batch_size: int, seed: int, start: int = 0, rank: int | None = None,
                 world: int | None = None):
        """Rank `rank` of `world` data-parallel ranks reads its own share of each epoch (default: this
        process's RANK and WORLD_SIZE)."""
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
        self.examples, self.batch_size, self.seed, self.position = examples, batch_size, seed, start
        self.per_epoch = len(examples) // self.world // batch_size
        if self.per_epoch == 0:
            raise KDBenchError(f"the training set has {len(examples)} examples, fewer than one micro-batch of "
                               f"{batch_size} per rank × {self.world} ranks.")
        self._order_epoch, self._order = None, []

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        epoch, i = divmod(self.position, self.per_epoch)
        if epoch != self._order_epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = torch.randperm(len(self.examples), generator=gen).tolist()[self.rank::self.world]
            self._order_epoch = epoch
        self.position += 1
        return [self.examples[j] for j in self._order[i * self.batch_size:(i + 1) * self.batch_size]]
