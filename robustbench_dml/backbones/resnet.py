"""torchvision ResNet-18/50 trunks for 224x224 data (CUB, Cars196, SOP), as in RobRank's rres18/rres50.

The ImageNet ``fc`` is replaced by a fresh Linear(features -> embedding_dim). Input (B, 3, 224, 224) in
[0,1]; ImageNet mean/std normalisation is the first layer of the model.

ImageNet weights (``pretrained=True``) come through torchvision's weights API (``ResNet18_Weights.IMAGENET1K_V1``,
``ResNet50_Weights.IMAGENET1K_V1``): read from torchvision's hub cache when the file is there, otherwise downloaded
once into it with torchvision's hash check; offline with an empty cache, one line says which file to place where.
``pretrained="/path/file.pth"`` reads a file the user gives (air-gapped machines). Every file is read with
``weights_only=True``. The weights' identity (torchvision's enum name or the file, and the file's sha256) is kept on
the model as ``pretrained_identity`` and saved in the checkpoint's ``meta.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_dml.backbones.base import BACKBONES, EmbeddingNet, Normalize
from robustbench_dml.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _imagenet_state(arch: str, pretrained: bool | str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ImageNet state dict and its identity, from the user's file or torchvision's weights API."""
    import torchvision

    from robustbench_dml.files import sha256_file

    if isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained)
        if not path.is_file():
            raise UserError(f"--pretrained-weights {path} does not exist; pass torchvision's {arch} ImageNet file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch's unpickler raises what the bytes make it raise
            raise UserError(f"--pretrained-weights {path} is not a torch weights file ({type(e).__name__}); pass "
                            f"torchvision's {arch} ImageNet file") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"--pretrained-weights {path} holds no state dict of tensors; pass torchvision's {arch} "
                            "ImageNet file")
        return state, {"file": str(path), "sha256": sha256_file(path)}
    weights = getattr(torchvision.models, WEIGHTS[arch]).IMAGENET1K_V1
    name = os.path.basename(weights.url)
    path = _cache_dir() / name
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:  # offline (URLError is an OSError), or a download failing the hash check
        raise UserError(f"ImageNet weights for {arch} are not in torchvision's cache and could not be downloaded "
                        f"({str(e).splitlines()[0][:80]}); place {name} at {path}, or pass --pretrained-weights FILE "
                        "(or --no-pretrained)") from None
    return state, {"weights": f"{WEIGHTS[arch]}.IMAGENET1K_V1", "file": name, "sha256": sha256_file(path)}


def _load_imagenet(net: nn.Module, arch: str, pretrained: bool | str) -> dict[str, Any]:
    state, identity = _imagenet_state(arch, pretrained)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise UserError(f"{identity['file']} is not a torchvision {arch} state dict (missing {missing[:3]}, extra "
                        f"{unexpected[:3]})")
    return identity


def _resnet(arch: str, embedding_dim: int, pretrained: bool | str | None) -> EmbeddingNet:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    identity = _load_imagenet(net, arch, pretrained) if pretrained else None
    head = nn.Linear(net.fc.in_features, embedding_dim)
    net.fc = nn.Identity()
    model = EmbeddingNet(net, head, embedding_dim=embedding_dim, input_size=224, in_channels=3,
                         normalize=Normalize(IMAGENET_MEAN, IMAGENET_STD))
    model.pretrained_identity = identity
    return model


@BACKBONES.register("resnet18")
def resnet18(embedding_dim: int = 512, pretrained: bool | str | None = True) -> EmbeddingNet:
    """ResNet-18 (RobRank rres18), 512-d features."""
    return _resnet("resnet18", embedding_dim, pretrained)


@BACKBONES.register("resnet50")
def resnet50(embedding_dim: int = 512, pretrained: bool | str | None = True) -> EmbeddingNet:
    """ResNet-50 (MDProp's backbone), 2048-d features."""
    return _resnet("resnet50", embedding_dim, pretrained)
