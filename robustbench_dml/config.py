"""Typed run configuration: frozen dataclasses, the 28x28 and 224x224 presets, validation on load.

Every number a paper fixes lives here or in a defense's ``Config`` / an attack suite. A resolved
:class:`TrainConfig` (no ``None`` left) is saved beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from robustbench_dml.errors import UserError


@dataclass(frozen=True)
class Preset:
    """Training schedule of ``docs/training.md``, Presets (SPC-2 epochs, pairs per batch)."""

    backbone: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    eval_every: int
    pretrained: bool


PRESETS: dict[str, Preset] = {
    "28": Preset(backbone="c2f2", epochs=8, batch_size=128, lr=1e-3, weight_decay=1e-7, eval_every=1,
                 pretrained=False),
    "224": Preset(backbone="resnet18", epochs=75, batch_size=56, lr=1e-5, weight_decay=4e-4, eval_every=5,
                  pretrained=True),
}


#: the largest seed every consumer takes (faiss's k-means and sampling seeds are signed 32-bit integers)
MAX_SEED = 2**31 - 1


def check_seed(seed, option: str) -> None:
    """A seed is an integer in 0..MAX_SEED; anything else is a one-line UserError naming ``option``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{option} must be an integer from 0 to {MAX_SEED} (got {seed!r})")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``None`` fields take the dataset's preset value in :meth:`resolve`.

    ``batch_size`` counts SPC-2 pairs per process (a batch holds twice as many images).
    ``defense_params`` overrides fields of the defense's own ``Config`` (e.g. ``{"steps": 8}``).
    ``pretrained``: True (torchvision's local cache), False, or a path to ImageNet weights.
    ``train_subset``: train on a seeded class-stratified subset of this many training images (the same subset
    for every training seed; ``datasets.base.stratified_subset``), for budgeted studies.
    """

    defense: str = "vanilla"
    dataset: str = "digits"
    data_root: str | None = None
    backbone: str | None = None
    embedding_dim: int = 512
    pretrained: bool | str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    eval_every: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    num_workers: int = 0
    train_subset: int | None = None
    defense_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_seed(self.seed, "--seed")
        for name in ("embedding_dim", "epochs", "batch_size", "eval_every", "train_subset"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf):
                raise UserError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"threads must be a positive integer, got {self.threads!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {self.num_workers}")

    def resolve(self, preset: Preset) -> TrainConfig:
        """Fill every ``None`` from ``preset``."""
        filled = {f.name: getattr(preset, f.name) for f in dataclasses.fields(Preset)
                  if hasattr(self, f.name) and getattr(self, f.name) is None}
        return dataclasses.replace(self, **filled)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
