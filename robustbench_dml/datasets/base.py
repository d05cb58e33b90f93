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
