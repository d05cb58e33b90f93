"""Backbones: embedding networks that take pixels in [0,1] and return raw (unnormalised) embeddings.

``create(id, embedding_dim=512, **kwargs)`` builds an :class:`EmbeddingNet`; its ``spec`` (id and
arguments) is what a checkpoint stores to rebuild it.
"""

from __future__ import annotations

from robustbench_dml.backbones.base import BACKBONES, EmbeddingNet, Normalize

__all__ = ["BACKBONES", "EmbeddingNet", "Normalize", "create", "list_backbones"]


def create(name: str, **kwargs) -> EmbeddingNet:
    model = BACKBONES.create(name, **kwargs)
    model.spec = {"backbone": name, **{k: v for k, v in kwargs.items() if k != "pretrained"}}
    return model


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.list(pattern)
