"""The embedding-network wrapper shared by every backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustbench_dml.registry import Registry

BACKBONES: Registry = Registry(
    "backbone", builtin_modules=("robustbench_dml.backbones.c2f2", "robustbench_dml.backbones.resnet")
)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel as the model's first, differentiable layer (budgets stay in pixels)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class EmbeddingNet(nn.Module):
    """``normalize -> trunk -> head``: pixels (B, C, H, W) in [0,1] to raw embeddings (B, embedding_dim).

    Distances are taken on L2-normalised embeddings (metric "N"); normalisation happens in the losses and the
    gallery, not here, so defenses can see raw embeddings.
    """

    spec: dict

    def __init__(self, trunk: nn.Module, head: nn.Module, *, embedding_dim: int, input_size: int,
                 in_channels: int, normalize: nn.Module | None = None):
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.trunk = trunk
        self.head = head
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.in_channels = in_channels
        self.spec = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.normalize(x)))
