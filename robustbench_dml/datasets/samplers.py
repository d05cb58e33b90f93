"""The SPC-2 batch layout (``docs/training.md``, Data) as a DistributedDataParallel-aware batch sampler.

An epoch is one pass over the training images in a permutation drawn from (seed, epoch); each image ``i``
becomes a pair ``(i, j)`` with ``j`` drawn uniformly from the images of the same class (``j`` may equal ``i``,
as in the reference, where the two copies then differ only by augmentation). A batch of ``P`` pairs is laid
out ``[a1, p1, a2, p2, ...]`` (2P indices). Under DDP every process draws the same global sequence of
batches and takes its own slice of each (pairs ``rank::world_size``), so processes never overlap.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from robustbench_dml.runtime import generator


class SPC2BatchSampler(Sampler[list[int]]):
    def __init__(self, labels: np.ndarray, pairs_per_batch: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True):
        labels = np.asarray(labels)
        if pairs_per_batch < 1:
            raise ValueError("pairs_per_batch must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.labels = labels
        self.pairs_per_batch = pairs_per_batch
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0
        order = np.argsort(labels, kind="stable")
        self._classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        self._members = [order[s:s + c] for s, c in zip(starts, counts)]
        self._class_of = np.searchsorted(self._classes, labels)
        self._global_batch = pairs_per_batch * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self._global_batch if self.drop_last else -(-n // self._global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        g = generator(self.seed, "spc2", self.epoch)
        perm = torch.randperm(len(self.labels), generator=g).numpy()
        u = torch.rand(len(self.labels), generator=g, dtype=torch.float64).numpy()
        for b in range(len(self)):
            anchors = perm[b * self._global_batch:(b + 1) * self._global_batch][self.rank::self.world_size]
            batch: list[int] = []
            for a in anchors:
                members = self._members[self._class_of[a]]
                partner = members[min(int(u[a] * len(members)), len(members) - 1)]
                batch += [int(a), int(partner)]
            yield batch
