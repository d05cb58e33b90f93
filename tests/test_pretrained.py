"""ImageNet weights for the 224 backbones come through torchvision's weights API: read from its hub cache, their
identity recorded; offline with an empty cache, one line says which file to place where. No test touches the
network: the offline case runs with every socket connection refused."""

from __future__ import annotations

import hashlib

import socket

import pytest
import torch
import torchvision

from robustbench_dml import backbones
from robustbench_dml.errors import UserError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torchvision hub cache for this test, and no network."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


def test_a_cached_file_is_loaded_through_the_weights_api_and_identified(hub):
    torch.manual_seed(3)
    imagenet = torchvision.models.resnet18(weights=None)
    hub.mkdir(parents=True)
    path = hub / "resnet18-f37072fd.pth"       # the file name of ResNet18_Weights.IMAGENET1K_V1
    torch.save(imagenet.state_dict(), path)
    model = backbones.create("resnet18", embedding_dim=16, pretrained=True)
    assert torch.equal(model.trunk.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.trunk.layer4[1].bn2.running_var, imagenet.layer4[1].bn2.running_var)
    assert model.pretrained_identity == {"weights": "ResNet18_Weights.IMAGENET1K_V1", "file": path.name,
                                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_offline_with_an_empty_cache_is_one_line_naming_the_file(hub):
    with pytest.raises(UserError) as err:
        backbones.create("resnet50", embedding_dim=16, pretrained=True)
    text = str(err.value)
    assert "\n" not in text and "resnet50-0676ba61.pth" in text and str(hub) in text
    assert "--pretrained-weights" in text
    assert not hub.exists() or not any(hub.iterdir())   # nothing half-downloaded left behind


def test_a_user_file_is_identified_by_its_hash(tmp_path):
    torch.manual_seed(4)
    imagenet = torchvision.models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    model = backbones.create("resnet18", embedding_dim=16, pretrained=str(tmp_path / "r18.pth"))
    digest = hashlib.sha256((tmp_path / "r18.pth").read_bytes()).hexdigest()
    assert model.pretrained_identity == {"file": str(tmp_path / "r18.pth"), "sha256": digest}
    with pytest.raises(UserError, match="does not exist"):
        backbones.create("resnet18", embedding_dim=16, pretrained=str(tmp_path / "missing.pth"))
