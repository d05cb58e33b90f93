"""A two-layer perceptron for 28x28 images: flatten, 256 hidden units, ReLU, then the embedding head."""

from __future__ import annotations

from torch import nn

from robustbench_dml.backbones import EmbeddingNet


def mlp28(embedding_dim: int = 512, in_channels: int = 1, hidden: int = 256) -> EmbeddingNet:
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, hidden), nn.ReLU())
    return EmbeddingNet(trunk, nn.Linear(hidden, embedding_dim), embedding_dim=embedding_dim, input_size=28,
                        in_channels=in_channels)
