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

    The contract a backbone (built in or a plugin) keeps:

    - **Registration**: a factory function registered with ``@BACKBONES.register(id)`` or, from another package,
      through the entry-point group ``dmlbench.backbones`` (``id = "module:factory"``). It takes
      ``embedding_dim`` and may take ``in_channels`` (the dataset's channels are passed when it does) and
      ``pretrained`` (``--no-pretrained`` / ``--pretrained-weights``); it returns an :class:`EmbeddingNet`.
    - **Input and output**: float (B, C, H, W) in [0, 1] at ``input_size``; input standardisation belongs in
      ``normalize`` (inside the model, so the attacks' eps stays in pixel units); output (B, embedding_dim) raw.
    - **Checkpoints**: the weights are saved as the state dict of the returned module (safetensors) and loaded
      by calling the same factory with the recorded arguments (``meta.json``: backbone id and keyword
      arguments), so the factory must build the same parameter names and shapes every time and read no file
      but the pretrained weights it is pointed at. Evaluating a checkpoint of a plugin backbone needs the plugin
      installed.
    - **Devices and randomness**: build on the CPU with torch's default initialisation (the harness seeds it and
      moves the model).
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
