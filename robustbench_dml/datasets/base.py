"""Dataset registry, static dataset descriptions and the in-memory dataset type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from robustbench_dml.registry import Registry

DATASETS: Registry = Registry(
    "dataset",
    builtin_modules=(
        "robustbench_dml.datasets.digits",
        "robustbench_dml.datasets.idx",
        "robustbench_dml.datasets.cub",
        "robustbench_dml.datasets.cars",
        "robustbench_dml.datasets.sop",
    ),
)


@dataclass(frozen=True)
class DatasetInfo:
    """What the harness needs to know about a dataset before reading it.

    ``preset`` selects the training/evaluation preset ("28" or "224"); ``suite`` is the default attack suite.
    """

    id: str
    image_size: int
    channels: int
    preset: str
    suite: str
    source: str


class RetrievalDataset(Dataset):
    """Base type: ``__getitem__`` gives ``(float tensor CxHxW in [0,1], int label)``; ``labels`` is int64 numpy."""

    info: DatasetInfo
    labels: np.ndarray


class TensorDataset(RetrievalDataset):
    """Images held in memory as one uint8 (N, C, H, W) tensor; converted to [0,1] floats per item."""

    def __init__(self, images_u8: torch.Tensor, labels: np.ndarray, info: DatasetInfo):
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(images_u8) != len(labels):
            raise ValueError(f"{len(images_u8)} images but {len(labels)} labels")
        self.images = images_u8
        self.labels = np.asarray(labels, dtype=np.int64)
        self.info = info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float().div_(255.0), int(self.labels[i])


class SubsetDataset(RetrievalDataset):
    """The rows ``indices`` of ``base`` (same items, same ``info``), with their ``labels``."""

    def __init__(self, base: RetrievalDataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[self.indices]
        self.info = base.info

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


def stratified_subset(dataset: RetrievalDataset, size: int, seed: int = 0) -> RetrievalDataset:
    """A seeded subset of ``size`` rows holding every class in proportion (the first ``round(size * n_c / N)``
    rows of each class's seeded permutation, at least 2 per class so that SPC-2 pairs exist); the dataset
    itself when ``size >= len(dataset)``."""
    n = len(dataset)
    if size >= n:
        return dataset
    rng = np.random.default_rng([seed, size])
    keep = []
    for c in np.unique(dataset.labels):
        rows = np.flatnonzero(dataset.labels == c)
        take = min(len(rows), max(2, round(size * len(rows) / n)))
        keep.append(rng.permutation(rows)[:take])
    return SubsetDataset(dataset, np.sort(np.concatenate(keep)))
