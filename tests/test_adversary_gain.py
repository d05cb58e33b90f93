"""Every adversarial defense's adversary must make training harder: ``adv_gain`` (training loss on the adversarial
inputs minus the same loss on the clean ones, same triplets) is positive. Pinned on CA-TRIDE, whose released
collapseness eases most triplets of a trained model (its CAP gain is negative)."""

import json

import pytest
import torch

import defenses
from defenses.base import StepContext
from robustbench_dml import datasets
from robustbench_dml.checkpoint import load_checkpoint, read_meta
from robustbench_dml.config import TrainConfig
from robustbench_dml.datasets.samplers import SPC2BatchSampler
from robustbench_dml.training import train

pytestmark = pytest.mark.slow  # each test trains a digits model for an epoch or two


@pytest.fixture(scope="module")
def ca_tride_run(tmp_path_factory):
    """The default CA-TRIDE on digits, 2 epochs (epoch 1 clean by the step ramp, epoch 2 attacked)."""
    out = tmp_path_factory.mktemp("ca_tride") / "run"
    train(TrainConfig(defense="ca_tride", dataset="digits", epochs=2, seed=0, device="cpu"), out)
    return out


def _history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_default_ca_tride_logs_a_positive_cap_gain_from_the_first_attacked_epoch(ca_tride_run):
    first, second = _history(ca_tride_run)
    assert "adv_gain" not in first and first["alpha_eff"] == 0.0  # epoch 0: the ramp's clean epoch
    assert second["adv_gain_cap"] > 0 and second["adv_gain"] > 0
    # lambda acts on digits (entanglement below the paper's range: SOP's 2, not an extrapolated 0)
    assert "adv_gain_anp" in second and "C" in second and second["lam"] >= 2.0
    for record in (first, second):  # the collapse diagnostic, every evaluated epoch
        assert 0 < record["intra_class_distance"] < record["inter_class_distance"] <= 2
        assert record["entanglement"] == pytest.approx(record["intra_class_distance"] /
                                                       record["inter_class_distance"])
    meta = read_meta(ca_tride_run / "checkpoint")
    config = meta["defense_config"]
    assert config["weighting"] == "slides_detached" and config["mode"] == "alternate" and config["tr_steps"] == "anp"
    assert meta["benign"]["inter_class_distance"] == second["inter_class_distance"]
    assert meta["defense_config"]["alpha"] == pytest.approx(2 * (77 / 255) / 16)


def _cap_gains(model, weighting, n_batches=3):
    train_set = datasets.create("digits", split="train")
    sampler = SPC2BatchSampler(train_set.labels, 128, seed=0)
    sampler.set_epoch(0)
    gains = []
    for i, batch in enumerate(list(sampler)[:n_batches]):
        x = torch.stack([train_set[j][0] for j in batch])
        y = torch.as_tensor(train_set.labels[batch])
        d = defenses.create("ca_tride", preset="28", mode="cap", weighting=weighting)
        d.train_mode(model)
        r = d.training_step(model, x, y, StepContext(epoch=4, max_epochs=8, global_step=i,
                                                     generator=torch.Generator().manual_seed(i), dataset="digits"))
        gains.append(r.stats["adv_gain_cap"])
    return gains


def test_detached_slides_weighting_attacks_where_the_released_one_eases(tmp_path):
    """On a c2f2 trained 2 vanilla epochs (anchor-positive distances spread far wider than 1/lambda)."""
    summary = train(TrainConfig(defense="vanilla", dataset="digits", epochs=2, seed=0, device="cpu"), tmp_path / "r")
    model, _ = load_checkpoint(summary.checkpoint)
    paper = _cap_gains(model, "slides_detached")
    released = _cap_gains(model, "released")  # lambda 10, as in the released file
    research = _cap_gains(model, "research_build")
    assert min(paper) > 0 and min(research) > 0
    assert max(released) <= 0, f"the released CAP should ease the triplets of a trained model, gains {released}"


@pytest.mark.parametrize("defense", ["est", "act", "hm", "mdprop"])
def test_every_pgd_defense_reports_a_positive_gain(defense, tmp_path):
    summary = train(TrainConfig(defense=defense, dataset="digits", epochs=1, batch_size=64, embedding_dim=32,
                                seed=0, device="cpu", defense_params={"steps": 4} if defense != "mdprop" else {}),
                    tmp_path / "run")
    (record,) = _history(summary.checkpoint.parent)
    assert record["adv_gain"] > 0, record
