"""RobRank-family checkpoints (PyTorch Lightning files) and MDProp's come in with one command: read without executing
anything, keys mapped onto our backbones, embeddings equal to the reference module's; hostile pickles never run."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types

import numpy as np
import torch.nn.functional as F

import pytest
import torch
from torch import nn

from robustbench_dml.checkpoint import load_checkpoint
from robustbench_dml.cli.main import main

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class RefRC2F2(nn.Module):
    """The reference's 28x28 model layout: one ``backbone`` Sequential, ending in the embedding layer."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, dim))

    def forward(self, x):
        return self.backbone(x)


class RefRRes18(nn.Module):
    """The reference's 224x224 layout: a torchvision ResNet-18 as ``backbone`` whose ``fc`` is the embedding
    layer; ImageNet normalisation in the forward."""

    def __init__(self, dim: int = 32):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.fc = nn.Linear(512, dim)

    def forward(self, x):
        return self.backbone((x - IMAGENET_MEAN) / IMAGENET_STD)


def _lightning_file(path, module: nn.Module, hparams) -> None:
    """What PyTorch Lightning writes: weights under state_dict beside training state and hyper-parameters."""
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.5.10",
                "state_dict": module.state_dict(), "hyper_parameters": hparams,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}], "lr_schedulers": [],
                "callbacks": {}}, path)


@pytest.mark.parametrize("ref_cls,dataset,shape,backbone", [
    (RefRC2F2, "digits", (5, 1, 28, 28), "c2f2"),
    (RefRRes18, "cub", (2, 3, 224, 224), "resnet18"),
])
def test_one_command_gives_the_reference_embeddings(tmp_path, capsys, ref_cls, dataset, shape, backbone):
    torch.manual_seed(0)
    ref = ref_cls().eval()
    if backbone == "resnet18":  # non-trivial BN statistics, so a wrong mapping or normalisation shows
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "epoch=3.ckpt"
    _lightning_file(path, ref, argparse.Namespace(dataset="fashion", loss="ptripletN", lr=1e-3))
    assert main(["convert", str(path), "--from", "robrank", "--dataset", dataset, "--out", str(tmp_path / "ck")]) == 0
    model, meta = load_checkpoint(tmp_path / "ck")
    assert (meta["backbone"], meta["embedding_dim"], meta["source_layout"]) == \
        (backbone, {"c2f2": 64, "resnet18": 32}[backbone], "robrank")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_a_named_backbone_must_match_the_file(tmp_path, capsys):
    path = tmp_path / "m.ckpt"
    _lightning_file(path, RefRC2F2(), {})
    assert main(["convert", str(path), "--from", "robrank", "--backbone", "resnet18", "--dataset", "digits",
                 "--out", str(tmp_path / "ck")]) == 2
    assert "holds a c2f2 model" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


class MixBN(nn.BatchNorm2d):
    """MDProp's triple BatchNorm: the clean route is the layer itself, ``aux_bn1`` / ``aux_bn2`` serve the two
    adversarial halves during training (only the clean route runs at test time)."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.aux_bn1 = nn.BatchNorm2d(num_features)
        self.aux_bn2 = nn.BatchNorm2d(num_features)


class RefMDProp(nn.Module):
    """MDProp's model as its code builds it: a torchvision-named ResNet-50 with triple BNs and ``fc`` as the
    128-d embedding layer, L2-normalised output; ImageNet normalisation is in its data pipeline."""

    def __init__(self, dim: int = 128):
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet50(weights=None, norm_layer=MixBN)
        self.net.fc = nn.Linear(2048, dim)

    def forward(self, x):
        return F.normalize(self.net((x - IMAGENET_MEAN) / IMAGENET_STD), dim=-1)


def _mdprop_file(path, ref: RefMDProp, monkeypatch, payload=None, where=None) -> None:
    """What MDProp's framework saves: the DataParallel state dict, its options (an argparse.Namespace), its
    training log (``utilities.logger.Progress_Saver`` objects holding numpy floats) and an aux entry."""
    logger = types.ModuleType("utilities.logger")

    class Progress_Saver:  # noqa: N801 - the reference's class name, which the file records
        def __init__(self):
            self.groups = {"Class_Recall": {"Recall @ 1": {"content": [np.float64(0.61)], "saved_idx": 1}}}

    Progress_Saver.__module__, Progress_Saver.__qualname__ = "utilities.logger", "Progress_Saver"
    logger.Progress_Saver = Progress_Saver
    monkeypatch.setitem(sys.modules, "utilities", types.ModuleType("utilities"))
    monkeypatch.setitem(sys.modules, "utilities.logger", logger)
    state = nn.DataParallel(ref.net).state_dict()
    assert next(iter(state)).startswith("module.")
    opt = argparse.Namespace(arch="resnet50_normalize", embed_dim=128, lr=1e-5, device=torch.device("cpu"))
    obj = {"state_dict": state, "opt": opt, "progress": {"Test": Progress_Saver()}, "aux": None}
    if where == "state_dict":
        state["conv1.weight"] = payload
    elif where == "opt":
        opt.lr = payload
    elif where == "progress":
        obj["progress"]["Test"].groups = payload
    torch.save(obj, path)


def test_an_mdprop_checkpoint_gives_the_reference_embeddings(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = RefMDProp().eval()
    for m in ref.modules():  # distinct statistics per route, so keeping a wrong route would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / "checkpoint_Test_discriminative_e_recall@1.pth.tar"
    _mdprop_file(path, ref, monkeypatch)
    monkeypatch.delitem(sys.modules, "utilities.logger")   # the reader never needs (or imports) MDProp's code
    assert main(["convert", str(path), "--from", "mdprop", "--dataset", "cub", "--out", str(tmp_path / "ck")]) == 0
    model, meta = load_checkpoint(tmp_path / "ck")
    assert (meta["backbone"], meta["embedding_dim"], meta["source_layout"]) == ("resnet50", 128, "mdprop")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(F.normalize(model(x), dim=-1), ref(x), atol=1e-5)


@pytest.mark.parametrize("where", ["state_dict", "opt", "progress", "top"])
def test_hostile_pickles_in_an_mdprop_file_never_run(tmp_path, capsys, monkeypatch, where):
    canary = tmp_path / "CANARY"
    path = tmp_path / "hostile.pth.tar"
    if where == "top":
        with open(path, "wb") as f:
            pickle.dump(_Payload(canary), f, protocol=2)
    else:
        torch.manual_seed(0)
        _mdprop_file(path, RefMDProp(dim=8), monkeypatch, payload=_Payload(canary), where=where)
    rc = main(["convert", str(path), "--from", "mdprop", "--dataset", "cub", "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and ("system" in err or where == "top")  # names what it would have run
    assert not canary.exists() and not (tmp_path / "ck").exists()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("layout", ["robrank", "state_dict"])
@pytest.mark.parametrize("where", ["hyper_parameters", "state_dict", "top"])
def test_hostile_pickles_in_any_layout_never_run(tmp_path, capsys, layout, where):
    canary = tmp_path / "CANARY"
    ref = RefRC2F2()
    obj = {"state_dict": ref.state_dict(), "hyper_parameters": argparse.Namespace(lr=1e-3)}
    if where == "top":
        obj = _Payload(canary)
    elif where == "state_dict":
        obj["state_dict"]["backbone.0.weight"] = _Payload(canary)
    else:
        obj["hyper_parameters"] = argparse.Namespace(lr=_Payload(canary))
    path = tmp_path / "hostile.ckpt"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    rc = main(["convert", str(path), "--from", layout, "--backbone", "c2f2", "--dataset", "digits",
               "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert not canary.exists() and not (tmp_path / "ck").exists()


def test_a_plain_state_dict_names_the_key_that_does_not_fit(tmp_path, capsys):
    from robustbench_dml import backbones

    state = backbones.create("c2f2", embedding_dim=8).state_dict()
    torch.save(state, tmp_path / "s.pt")
    assert main(["convert", str(tmp_path / "s.pt"), "--backbone", "c2f2", "--dataset", "digits",
                 "--embedding-dim", "16", "--out", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err  # an 8-d head where 16-d was asked for: the key, and the option that fits
    assert "shape of head." in err and "pass --embedding-dim 8" in err


class PmlMLP(nn.Module):
    """pytorch-metric-learning's examples' embedder, ``MLP([features, dim])``: one linear layer reachable as
    ``net.0`` and as ``last_linear`` (so its state dict names the weights twice)."""

    def __init__(self, sizes):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(sizes[0], sizes[1]))
        self.last_linear = self.net[-1]

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("arch, features", [("resnet18", 512), ("resnet50", 2048)])
def test_a_pml_trunk_and_embedder_pair_converts_to_the_embeddings_the_library_gives(tmp_path, arch, features):
    # built as the library's README builds them: a torchvision trunk with fc replaced by an identity, an MLP
    # embedder, saved with the library's save_model; the reference embeddings come from its InferenceModel
    import torchvision
    from pytorch_metric_learning.utils import common_functions as c_f
    from pytorch_metric_learning.utils.inference import InferenceModel

    torch.manual_seed(0)
    trunk = getattr(torchvision.models, arch)(weights=None)
    trunk.fc = nn.Identity()  # an identity in place of fc, as the library's examples do
    embedder = PmlMLP([features, 64])
    for m in trunk.modules():  # non-trivial statistics, so a wrong mapping of any BN would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    trunk.eval(), embedder.eval()
    c_f.save_model(trunk, str(tmp_path / "trunk_best1.pth"))
    c_f.save_model(embedder, str(tmp_path / "embedder_best1.pth"))
    assert main(["convert", str(tmp_path / "trunk_best1.pth"), "--from", "pml", "--embedder",
                 str(tmp_path / "embedder_best1.pth"), "--dataset", "cub", "--out", str(tmp_path / "ck")]) == 0
    model, meta = load_checkpoint(tmp_path / "ck")
    assert (meta["backbone"], meta["embedding_dim"], meta["source_layout"]) == (arch, 64, "pml")
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # [0, 1] pixels
    reference = InferenceModel(trunk, embedder=embedder, data_device="cpu")
    with torch.no_grad():
        expected = reference.get_embeddings((x - IMAGENET_MEAN) / IMAGENET_STD)  # the library's transform
        assert torch.allclose(F.normalize(model(x), dim=-1), expected, atol=1e-5)


def test_a_pml_pair_that_does_not_map_is_refused_in_one_line(tmp_path, capsys):
    import torchvision

    trunk = torchvision.models.resnet18(weights=None)  # fc kept: not the library's recipe
    torch.save(trunk.state_dict(), tmp_path / "t.pth")
    torch.save(nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 64)).state_dict(), tmp_path / "e.pth")
    torch.save(nn.Linear(512, 64).state_dict(), tmp_path / "e1.pth")
    cases = [(["--embedder", str(tmp_path / "e.pth")], "2 linear layers found"),
             (["--embedder", str(tmp_path / "e1.pth")], "fc replaced by an identity"),
             ([], "--from pml takes the trunk's file and --embedder FILE")]
    for extra, match in cases:
        assert main(["convert", str(tmp_path / "t.pth"), "--from", "pml", *extra, "--dataset", "cub",
                     "--out", str(tmp_path / "ck")]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1
        assert not (tmp_path / "ck").exists()
