"""Datasets: a registry of retrieval datasets in their official layouts.

``create(name, root=None, split="train"|"test")`` returns a torch Dataset of ``(image in [0,1], label)``
with a ``labels`` attribute (1-D int64 numpy array) and an ``info`` attribute (:class:`DatasetInfo`).
"""

from __future__ import annotations

from robustbench_dml.datasets.base import DATASETS, DatasetInfo, RetrievalDataset, TensorDataset

__all__ = ["DATASETS", "DatasetInfo", "RetrievalDataset", "TensorDataset", "create", "info", "list_datasets"]


def create(name: str, root: str | None = None, split: str = "train", **kwargs) -> RetrievalDataset:
    """Build dataset ``name`` (a registered id) for ``split`` from ``root`` (ignored by ``digits``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return DATASETS.create(name, root=root, split=split, **kwargs)


def info(name: str) -> DatasetInfo:
    """The static description of dataset ``name`` without reading any file."""
    return DATASETS.get(name).info


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)
