"""torchvision ResNet-18/50 trunks for 224x224 data (CUB, Cars196, SOP), as in RobRank's rres18/rres50.

The ImageNet ``fc`` is replaced by a fresh Linear(features -> embedding_dim). Input (B, 3, 224, 224) in
[0,1]; ImageNet mean/std normalisation is the first layer of the model. ImageNet weights come from a file
the user gives (``pretrained="/path/resnet18.pth"``) or torchvision's local cache (``pretrained=True``);
nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from robustbench_dml.backbones.base import BACKBONES, EmbeddingNet, Normalize
from robustbench_dml.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# File names torchvision uses in its hub cache for the ImageNet weights.
CACHE_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_imagenet(net: nn.Module, arch: str, pretrained: bool | str) -> None:
    path = Path(pretrained) if isinstance(pretrained, (str, os.PathLike)) else _cache_dir() / CACHE_FILES[arch]
    if not path.is_file():
        raise UserError(
            f"ImageNet weights for {arch} not found at {path}; pass --pretrained-weights FILE "
            f"(torchvision's {CACHE_FILES[arch]}) or --no-pretrained"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise UserError(f"{path} is not a torchvision {arch} state dict (missing {missing[:3]}, extra {unexpected[:3]})")


def _resnet(arch: str, embedding_dim: int, pretrained: bool | str | None) -> EmbeddingNet:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        _load_imagenet(net, arch, pretrained)
    head = nn.Linear(net.fc.in_features, embedding_dim)
    net.fc = nn.Identity()
    return EmbeddingNet(net, head, embedding_dim=embedding_dim, input_size=224, in_channels=3,
                        normalize=Normalize(IMAGENET_MEAN, IMAGENET_STD))


@BACKBONES.register("resnet18")
def resnet18(embedding_dim: int = 512, pretrained: bool | str | None = True) -> EmbeddingNet:
    """ResNet-18 (RobRank rres18), 512-d features."""
    return _resnet("resnet18", embedding_dim, pretrained)


@BACKBONES.register("resnet50")
def resnet50(embedding_dim: int = 512, pretrained: bool | str | None = True) -> EmbeddingNet:
    """ResNet-50 (MDProp's backbone), 2048-d features."""
    return _resnet("resnet50", embedding_dim, pretrained)
