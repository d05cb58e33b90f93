import json
import os
import pickle

import pytest
import torch

from robustbench_dml import backbones
from robustbench_dml.checkpoint import convert_state_dict, load_checkpoint, read_meta, save_checkpoint
from robustbench_dml.errors import UserError


def _model(seed=0):
    torch.manual_seed(seed)
    return backbones.create("c2f2", embedding_dim=16, in_channels=1)


def test_round_trip_is_bit_exact_and_rebuilds_from_registry(tmp_path):
    m = _model()
    d = save_checkpoint(tmp_path / "ck", m, {"dataset": "digits", "defense": "vanilla"})
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "model.safetensors"]
    m2, meta = load_checkpoint(d)
    assert meta["embedding_dim"] == 16 and meta["backbone"] == "c2f2" and not m2.training
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(m.eval()(x), m2(x))


def test_same_weights_give_the_same_sha(tmp_path):
    a = save_checkpoint(tmp_path / "a", _model(1), {"dataset": "digits", "defense": "vanilla"})
    b = save_checkpoint(tmp_path / "b", _model(1), {"dataset": "digits", "defense": "vanilla"})
    c = save_checkpoint(tmp_path / "c", _model(2), {"dataset": "digits", "defense": "vanilla"})
    assert read_meta(a)["weights_sha256"] == read_meta(b)["weights_sha256"] != read_meta(c)["weights_sha256"]


def test_tampered_weights_are_refused(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model(), {"dataset": "digits", "defense": "vanilla"})
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256"):
        load_checkpoint(d)


def test_wrong_shapes_are_refused_with_a_clear_line(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model(), {"dataset": "digits", "defense": "vanilla"})
    meta = json.loads((d / "meta.json").read_text())
    meta["embedding_dim"] = 32
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not fit backbone c2f2") as e:
        load_checkpoint(d)
    assert "\n" not in str(e.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickle_directory_is_refused_without_running_the_payload(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "evil"
    d.mkdir()
    with open(d / "model.pt", "wb") as f:
        pickle.dump({"w": _Payload()}, f, protocol=2)  # torch.load's own protocol: no warning
    with pytest.raises(UserError, match="pickled checkpoints are never loaded"):
        load_checkpoint(d)
    # the explicit conversion path uses weights_only=True and refuses the payload too
    with pytest.raises(UserError, match="holds more than plain tensors"):
        convert_state_dict(d / "model.pt", tmp_path / "out", backbone="c2f2", dataset="digits")
    assert not (tmp_path / "PWNED_MARKER").exists()
    assert not (tmp_path / "out").exists()


def test_convert_plain_state_dict_strips_ddp_prefix(tmp_path):
    m = _model(3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}, tmp_path / "w.pt")
    d = convert_state_dict(tmp_path / "w.pt", tmp_path / "ck", backbone="c2f2", dataset="digits",
                           embedding_dim=16, key="state_dict")
    m2, meta = load_checkpoint(d)
    assert meta["defense"] == "external"
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


@pytest.mark.parametrize("damage", ["no_meta", "bad_json", "unknown_backbone", "not_a_dir"])
def test_malformed_checkpoints_give_one_line_errors(tmp_path, damage):
    d = save_checkpoint(tmp_path / "ck", _model(), {"dataset": "digits", "defense": "vanilla"})
    if damage == "no_meta":
        (d / "meta.json").unlink()
    elif damage == "bad_json":
        (d / "meta.json").write_text("{not json")
    elif damage == "unknown_backbone":
        meta = json.loads((d / "meta.json").read_text())
        meta["backbone"] = "vit_huge"
        (d / "meta.json").write_text(json.dumps(meta))
    else:
        d = d / "model.safetensors"
    with pytest.raises(UserError) as e:
        load_checkpoint(d)
    assert "\n" not in str(e.value)


def test_convert_reads_the_embedding_size_from_the_head_and_names_the_option_when_told_otherwise(tmp_path):
    from robustbench_dml import backbones

    net = backbones.create_for_data("c2f2", embedding_dim=128, channels=1)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    d = convert_state_dict(tmp_path / "w.pt", tmp_path / "ck", backbone="c2f2", dataset="digits")
    m2, meta = load_checkpoint(d)
    assert meta["embedding_dim"] == 128
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(UserError, match="pass --embedding-dim 128"):
        convert_state_dict(tmp_path / "w.pt", tmp_path / "ck2", backbone="c2f2", dataset="digits", embedding_dim=64)
    assert not (tmp_path / "ck2").exists()


def test_convert_reads_the_channels_from_the_first_layer_and_names_the_mismatch(tmp_path):
    from robustbench_dml import backbones

    rgb = backbones.create_for_data("c2f2", embedding_dim=32, channels=3)  # a 3-channel c2f2 (e.g. CIFAR-like)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(UserError, match="first layer takes 3-channel images but the images of digits have 1"):
        convert_state_dict(tmp_path / "rgb.pt", tmp_path / "ck", backbone="c2f2", dataset="digits")
    assert not (tmp_path / "ck").exists()
    d = convert_state_dict(tmp_path / "rgb.pt", tmp_path / "ck3", backbone="c2f2", dataset="digits", channels=3)
    assert load_checkpoint(d)[0].trunk[0].in_channels == 3
