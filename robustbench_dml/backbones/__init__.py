"""Backbones: embedding networks that take pixels in [0,1] and return raw (unnormalised) embeddings.

``create(id, embedding_dim=512, **kwargs)`` builds an :class:`EmbeddingNet`; its ``spec`` (id and
arguments) is what a checkpoint stores to rebuild it.
"""

from __future__ import annotations

from robustbench_dml.backbones.base import BACKBONES, EmbeddingNet, Normalize

__all__ = ["BACKBONES", "EmbeddingNet", "Normalize", "create", "create_for_data", "list_backbones", "takes"]


def create(name: str, **kwargs) -> EmbeddingNet:
    model = BACKBONES.create(name, **kwargs)
    model.spec = {"backbone": name, **{k: v for k, v in kwargs.items() if k != "pretrained"}}
    return model


def takes(name: str, argument: str) -> bool:
    """Whether backbone ``name``'s factory takes ``argument`` (``in_channels`` and ``pretrained`` are optional)."""
    import inspect

    return argument in inspect.signature(BACKBONES.get(name)).parameters


def create_for_data(name: str, *, embedding_dim: int, channels: int,
                    pretrained: bool | str | None = False) -> EmbeddingNet:
    """Build ``name`` for images with ``channels`` channels, passing only the arguments its factory takes."""
    kwargs: dict = {"embedding_dim": embedding_dim}
    if takes(name, "in_channels"):
        kwargs["in_channels"] = channels
    if takes(name, "pretrained"):
        kwargs["pretrained"] = pretrained
    return create(name, **kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.list(pattern)
