"""MNIST (LeCun, Cortes and Burges) and Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from their official
IDX files.

Accepted layouts under ``root`` (searched in this order, the first folder holding a train or test image file
wins): torchvision's ``MNIST/raw`` / ``FashionMNIST/raw``, a ``mnist`` / ``fashion-mnist`` subfolder, then
``root`` itself. Each of the four files may be plain or gzip-compressed (``.gz``); the plain one is used when
both exist. Compression is detected from the content, not the name.

IDX format: two zero bytes, a type byte (0x08 = unsigned byte, the only one used here), the number of
dimensions, then one big-endian uint32 per dimension, then the row-major data. Images must be (N, 28, 28)
(magic 0x00000803) and labels (N,) in 0..9 (magic 0x00000801) with the same N; the data must fill the file
exactly. Splits: train = the official 60,000 training images, test = the official 10,000 t10k images (the
same 10 classes). Items: (1, 28, 28) float32 in [0, 1] (pixel / 255), labels 0..9.

Mix-up guard: both datasets use the same file names, so a folder of the other dataset would load silently.
For full-size files (60,000 / 10,000 labels) the label counts tell them apart (Fashion-MNIST has exactly
6,000 / 1,000 per class, MNIST does not); a mismatch is a one-line error.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

from robustbench_dml.datasets.base import DATASETS, DatasetInfo, TensorDataset
from robustbench_dml.datasets.images import check_split, malformed, require_root
from robustbench_dml.errors import UserError
from robustbench_dml.files import read_bounded

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
SIZE = 28
NUM_CLASSES = 10
FULL_SIZE = {"train": 60000, "test": 10000}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_bytes(path: Path, title: str, hint: str) -> bytes:
    """The decompressed content of ``path`` (gzip detected by its magic bytes)."""
    try:
        raw = read_bounded(path, "idx")
    except OSError as e:
        raise malformed(title, path, f"cannot read ({e.strerror or e})", hint) from None
    if raw[:2] == b"\x1f\x8b":
        from robustbench_dml.files import READ_LIMITS, gunzip_bounded

        try:
            return gunzip_bounded(raw, READ_LIMITS["idx"])
        except ValueError as e:
            raise malformed(title, path, str(e), hint) from None
    return raw


def parse_idx(data: bytes, magic: int, where: Path, title: str, hint: str) -> np.ndarray:
    """Validate an unsigned-byte IDX blob against ``magic`` and return its data as a uint8 array."""
    if len(data) < 4:
        raise malformed(title, where, f"only {len(data)} bytes, too short for an IDX header", hint)
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise malformed(title, where, f"IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
                                      "(wrong file or not an IDX file)", hint)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise malformed(title, where, f"truncated IDX header ({len(data)} of {header} bytes)", hint)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)  # Python integers: a huge declared shape cannot overflow
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        shape = "x".join(map(str, dims))
        raise malformed(title, where, f"{kind}: {len(data)} bytes, an IDX array of shape {shape} needs "
                                      f"{expected}", hint)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class IdxDigits(TensorDataset):
    """Shared loader; subclasses set ``info``, ``title``, ``hint`` and ``subfolders``."""

    title: str
    hint: str
    subfolders: tuple[str, ...]

    def __init__(self, root: str | None = None, split: str = "train"):
        check_split(split)
        base = require_root(root, self.title, self.hint)
        folder = self._locate(base, split)
        labels = self._labels(folder, split)
        images_path = self._file(folder, FILES[split][0])
        images = parse_idx(read_idx_bytes(images_path, self.title, self.hint), IMAGES_MAGIC, images_path,
                           self.title, self.hint)
        if images.shape[1:] != (SIZE, SIZE):
            raise malformed(self.title, images_path, f"images are {images.shape[1]}x{images.shape[2]}, "
                                                     f"expected {SIZE}x{SIZE}", self.hint)
        if len(images) != len(labels):
            raise malformed(self.title, images_path, f"{len(images)} images but {len(labels)} labels in "
                                                     f"{FILES[split][1]}", self.hint)
        tensor = torch.from_numpy(images.copy()).unsqueeze(1)
        super().__init__(tensor, labels.astype(np.int64), self.info)

    def _locate(self, base: Path, split: str) -> Path:
        candidates = [base / sub for sub in self.subfolders] + [base]
        for folder in candidates:
            if any((folder / (name + ext)).is_file() for name in FILES[split] for ext in ("", ".gz")):
                return folder
        where = " or ".join(str(c) for c in candidates)
        raise UserError(f"{self.title} not found: expected {FILES[split][0]}[.gz] and {FILES[split][1]}[.gz] "
                        f"in {where}; {self.hint}")

    def _file(self, folder: Path, name: str) -> Path:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
        raise UserError(f"{self.title} not found: expected {folder / name}[.gz]; {self.hint}")

    def _labels(self, folder: Path, split: str) -> np.ndarray:
        path = self._file(folder, FILES[split][1])
        labels = parse_idx(read_idx_bytes(path, self.title, self.hint), LABELS_MAGIC, path, self.title, self.hint)
        if labels.size and labels.max() >= NUM_CLASSES:
            raise malformed(self.title, path, f"label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}",
                            self.hint)
        if len(labels) == FULL_SIZE[split]:
            self._check_identity(labels, path, split)
        return labels

    def _check_identity(self, labels: np.ndarray, path: Path, split: str) -> None:
        balanced = bool(np.all(np.bincount(labels, minlength=NUM_CLASSES) == FULL_SIZE[split] // NUM_CLASSES))
        if balanced != (self.info.id == "fashion"):
            other = "Fashion-MNIST" if balanced else "MNIST"
            raise UserError(f"{path} holds {other} labels, not {self.title} (the two use the same file names); "
                            f"point --data-root at the {self.title} files; {self.hint}")


@DATASETS.register("mnist")
class MNIST(IdxDigits):
    info = DatasetInfo(id="mnist", image_size=28, channels=1, preset="28", suite="rob28",
                       source="the four official MNIST IDX files (.gz or plain) in --data-root")
    title = "MNIST"
    hint = ("download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/) into --data-root")
    subfolders = ("MNIST/raw", "mnist")


@DATASETS.register("fashion")
class FashionMNIST(IdxDigits):
    info = DatasetInfo(id="fashion", image_size=28, channels=1, preset="28", suite="rob28",
                       source="the four official Fashion-MNIST IDX files (.gz or plain) in --data-root")
    title = "Fashion-MNIST"
    hint = ("download the four IDX files (train-images-idx3-ubyte.gz, ...) from "
            "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into --data-root")
    subfolders = ("FashionMNIST/raw", "fashion-mnist", "fashion")
