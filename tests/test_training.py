"""The training harness on the embedded digits data: determinism, exact resume, outputs, errors."""

import json

import pytest
import torch

from robustbench_dml.checkpoint import load_checkpoint, read_meta
from robustbench_dml.config import TrainConfig
from robustbench_dml.errors import UserError
from robustbench_dml.training import train

TINY = dict(dataset="digits", epochs=2, batch_size=64, embedding_dim=16, device="cpu", threads=1)


def test_same_seed_reproduces_the_same_checkpoint(tmp_path):
    a = train(TrainConfig(seed=5, **TINY), tmp_path / "a")
    b = train(TrainConfig(seed=5, **TINY), tmp_path / "b")
    c = train(TrainConfig(seed=6, **TINY), tmp_path / "c")
    sha = [read_meta(s.checkpoint)["weights_sha256"] for s in (a, b, c)]
    assert sha[0] == sha[1] != sha[2]
    assert a.steps == 2 * (898 // 64)
    assert a.forward_passes == a.steps and a.backward_passes == a.steps  # vanilla: 1 F + 1 B per step


def test_resume_after_interruption_is_exact(tmp_path):
    full = train(TrainConfig(seed=1, **{**TINY, "epochs": 3}), tmp_path / "full")
    # "interrupt" after 1 epoch, then resume to 3 epochs in the same directory
    train(TrainConfig(seed=1, **{**TINY, "epochs": 1}), tmp_path / "part")
    cfg = json.loads((tmp_path / "part" / "config.json").read_text())
    assert cfg["epochs"] == 1
    resumed = train(TrainConfig(seed=1, **{**TINY, "epochs": 3}), tmp_path / "part", resume=True)
    assert read_meta(full.checkpoint)["weights_sha256"] == read_meta(resumed.checkpoint)["weights_sha256"]
    history = [json.loads(line) for line in (tmp_path / "part" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the summary covers the whole run, not only the epochs of the resuming call
    assert resumed.seconds_per_epoch == pytest.approx(sum(h["seconds"] for h in history) / 3)
    assert resumed.benign_r1 == history[-1]["R@1"] == full.benign_r1
    again = train(TrainConfig(seed=1, **{**TINY, "epochs": 3}), tmp_path / "part", resume=True)  # nothing left
    assert (again.seconds_per_epoch, again.benign_r1) == (resumed.seconds_per_epoch, resumed.benign_r1)


def test_run_directory_outputs_and_metadata(tmp_path):
    s = train(TrainConfig(seed=0, **TINY), tmp_path / "run")
    model, meta = load_checkpoint(s.checkpoint)
    assert meta["dataset"] == "digits" and meta["defense"] == "vanilla" and meta["backbone"] == "c2f2"
    assert meta["train_config"]["lr"] == 1e-3 and meta["train_config"]["batch_size"] == 64
    assert meta["defense_config"] == {"miner": "random", "margin": 0.2}
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 16)
    assert 0 <= s.benign_r1 <= 100


def test_existing_run_needs_resume(tmp_path):
    train(TrainConfig(seed=0, **{**TINY, "epochs": 1}), tmp_path / "run")
    with pytest.raises(UserError, match="--resume"):
        train(TrainConfig(seed=0, **{**TINY, "epochs": 1}), tmp_path / "run")


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match="unknown defense"):
        train(TrainConfig(defense="nope", **TINY), tmp_path / "x")
    with pytest.raises(UserError, match="takes 224x224"):
        train(TrainConfig(backbone="resnet18", pretrained=False, **TINY), tmp_path / "y")
