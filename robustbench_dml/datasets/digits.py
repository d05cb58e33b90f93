"""scikit-learn's handwritten digits (UCI optdigits test part), the embedded default that needs no files.

1,797 8x8 images with 17 grey levels, 10 classes; upsampled to 28x28 (bilinear) so the 28x28 models and
the ``rob28`` suite apply unchanged. Split: seeded, stratified, half train / half test (the same classes,
as for MNIST).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from robustbench_dml.datasets.base import DATASETS, DatasetInfo, TensorDataset

INFO = DatasetInfo(
    id="digits", image_size=28, channels=1, preset="28", suite="rob28",
    source="scikit-learn's bundled load_digits() (no download)",
)
SPLIT_SEED = 0
TEST_FRACTION = 0.5


def _load_all() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0, 1)
    return (x * 255).round_().to(torch.uint8), bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: per class, a seeded permutation, the first half (rounded down) to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(len(idx) * TEST_FRACTION)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@DATASETS.register("digits")
class Digits(TensorDataset):
    info = INFO

    def __init__(self, root: str | None = None, split: str = "train"):
        images, labels = _load_all()
        train, test = split_indices(labels)
        idx = train if split == "train" else test
        super().__init__(images[torch.from_numpy(idx)], labels[idx], INFO)
