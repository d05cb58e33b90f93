"""The dmlbench command line as a user meets it: listings, one-line refusals, nothing half-written."""

import json
import pickle

import pytest
import torch

from robustbench_dml import backbones, datasets
from robustbench_dml.checkpoint import save_checkpoint
from robustbench_dml.cli.main import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmlbench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind,expected", [("datasets", "digits"), ("backbones", "c2f2"), ("defenses", "ca_tride"),
                                           ("attacks", "CA+"), ("suites", "rob28"), ("suites", "rankaa28")])
def test_list(kind, expected, capsys):
    assert main(["list", kind]) == 0
    assert expected in capsys.readouterr().out.split()


def test_list_suites_shows_each_version_and_hash(capsys):
    from attacks.suites import get_suite

    assert main(["list", "suites", "rankaa28*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the current version first, then the superseded ones, newest first
    assert [line.split()[0] for line in lines] == ["rankaa28", "rankaa28.v2", "rankaa28.v1", "rankaa28plus"]
    assert "superseded" in lines[1] and "superseded" in lines[2] and "superseded" not in lines[0]
    for line in lines:
        suite = get_suite(line.split()[0])
        assert f"version {suite.version}" in line and suite.hash[:12] in line


def test_list_glob(capsys):
    assert main(["list", "backbones", "resnet*"]) == 0
    assert capsys.readouterr().out.split() == ["resnet18", "resnet50"]


def test_missing_dataset_is_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "cub", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "CUB" in _err_line(capsys)
    assert not (tmp_path / "r").exists()


def test_unknown_defense_suggests(capsys, tmp_path):
    assert main(["train", "--defense", "ca-tride", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean ca_tride" in _err_line(capsys)


def _checkpoint(tmp_path, name="ck", dataset="digits"):
    torch.manual_seed(0)
    model = backbones.create("c2f2", embedding_dim=8, in_channels=1)
    return save_checkpoint(tmp_path / name, model, {"dataset": dataset, "defense": "vanilla"})


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


@pytest.mark.parametrize("damage", ["pickle", "no_meta", "unknown_dataset", "bad_shape", "tampered", "missing"])
def test_submit_refusals_leave_no_trace(tmp_path, capsys, damage):
    ck = _checkpoint(tmp_path)
    if damage == "pickle":
        (ck / "model.safetensors").unlink()
        (ck / "meta.json").unlink()
        with open(ck / "model.pth", "wb") as f:
            pickle.dump(_Payload(), f)
    elif damage == "no_meta":
        (ck / "meta.json").unlink()
    elif damage in ("unknown_dataset", "bad_shape"):
        meta = json.loads((ck / "meta.json").read_text())
        if damage == "unknown_dataset":
            meta["dataset"] = "imagenet"
        else:
            meta["embedding_dim"] = 9
        (ck / "meta.json").write_text(json.dumps(meta))
    elif damage == "tampered":
        data = bytearray((ck / "model.safetensors").read_bytes())
        data[-3] ^= 1
        (ck / "model.safetensors").write_bytes(bytes(data))
    else:
        ck = tmp_path / "nowhere"
    boards = tmp_path / "boards"
    assert main(["submit", str(ck), "--leaderboard-dir", str(boards), "--name", "eve"]) == 2
    _err_line(capsys)
    assert "payload ran" not in capsys.readouterr().out
    assert not boards.exists()


def test_convert_then_benign_evaluate(tmp_path, capsys):
    torch.manual_seed(1)
    model = backbones.create("c2f2", embedding_dim=8, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), "--backbone", "c2f2", "--dataset", "digits",
                 "--embedding-dim", "8", "--out", str(tmp_path / "ck")]) == 0
    assert capsys.readouterr().out.strip().endswith("ck")
    out = tmp_path / "b.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--benign-only", "--json", str(out),
                 "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    assert set(data["benign"]) >= {"R@1", "R@2", "mAP", "MAP@R", "mAP@10", "NMI"} and data["num_items"] == 896
    # the collapse diagnostic too, as every evaluation's benign block has it: brute force over all pairs i != j of
    # the normalised test embeddings
    assert "intra d" in capsys.readouterr().out
    test = datasets.create("digits", split="test")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(torch.stack([test[i][0] for i in range(len(test))])), dim=1)
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    dist, same = torch.cdist(emb.double(), emb.double()), labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    other = labels[:, None] != labels[None, :]
    assert data["benign"]["intra_class_distance"] == pytest.approx(dist[same].mean().item(), abs=1e-4)
    assert data["benign"]["inter_class_distance"] == pytest.approx(dist[other].mean().item(), abs=1e-4)


def test_leaderboard_show_without_board_is_one_line(tmp_path, capsys):
    assert main(["leaderboard", "show", "--dataset", "digits", "--leaderboard-dir", str(tmp_path),
                 "--no-official"]) == 2
    assert "dmlbench run" in _err_line(capsys)
    # the package's official digits rows are shown from any folder, marked, with their budget, never stored
    assert main(["leaderboard", "show", "--dataset", "digits", "--leaderboard-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Budget |" in out and "| full |" in out
    # two training seeds of one defense are told apart by the seed their recipes record
    assert "robustbench-dml (official, seed 0)" in out and "robustbench-dml (official, seed 1)" in out
    assert not any(tmp_path.iterdir())


def test_leaderboard_show_reference_rows(tmp_path, capsys):
    # the papers' rows hold the robrank protocol: the default (corrected) view has nothing and says where to look
    assert main(["leaderboard", "show", "--dataset", "cub", "--leaderboard-dir", str(tmp_path)]) == 2
    assert "--protocol robrank" in _err_line(capsys)
    assert main(["leaderboard", "show", "--dataset", "cub", "--protocol", "robrank",
                 "--leaderboard-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cub; the papers' rows (their own suites); Protocol: robrank (")
    assert "CA-TRIDE" in out or "ca_tride" in out
    assert "51.6" in out  # the CA-TRIDE paper's ARS on CUB


@pytest.mark.slow  # two whole Fashion-MNIST benign phases (10,000 x 10,000), end to end
def test_one_evaluation_writes_both_protocols_and_tables_never_mix_them(tmp_path, capsys, shared_data):
    """evaluate measures corrected and robrank in one run; compare names the protocol it shows and puts the
    papers' (robrank) rows only beside robrank numbers."""
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                         {"dataset": "fashion", "defense": "vanilla"})
    out = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--data-root", str(shared_data / "fashion-mnist"),
                 "--max-queries", "4", "--attacks", "CA+,ES,GTM", "--json", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "corrected: ERS" in printed and "robrank: ERS" in printed
    data = json.loads(out.read_text())
    assert data["schema_version"] == 2 and sorted(data["protocols"]) == ["corrected", "robrank"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "r.json"]  # the resume state went with completion
    c, r = data["protocols"]["corrected"], data["protocols"]["robrank"]
    assert c["per_query"]["CA+"] == r["per_query"]["CA+"] and c["per_query"]["ES:D"] != r["per_query"]["ES:D"]

    assert main(["compare", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("fashion; rob28 v1 (eps 77/255); Protocol: corrected (") and "(paper)" not in shown
    assert main(["compare", str(out), "--reference"]) == 2            # corrected numbers beside the papers': never
    assert "--protocol robrank" in _err_line(capsys)
    assert main(["compare", str(out), "--reference", "--protocol", "robrank", "--format", "csv"]) == 0
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 + 3                                         # ours and RobRank's three Fashion rows
    assert {row["protocol"] for row in rows} == {"robrank"} and sum("(paper)" in row["by"] for row in rows) == 3
    # a result measured with --robrank-compat holds robrank only: asking for corrected says so in one line
    compat = tmp_path / "compat.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--data-root", str(shared_data / "fashion-mnist"),
                 "--max-queries", "4", "--attacks", "GTM", "--robrank-compat", "--json", str(compat),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert list(json.loads(compat.read_text())["protocols"]) == ["robrank"]
    assert main(["compare", str(compat)]) == 2
    assert "--protocol robrank" in _err_line(capsys)


def test_evaluate_logs_one_line_per_finished_attack_off_a_terminal(tmp_path, capsys):
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                         {"dataset": "digits", "defense": "vanilla"})
    args = ["evaluate", "--checkpoint", str(ck), "--max-queries", "8", "--attacks", "TMA,GTM", "--device", "cpu",
            "--eval-seed", "1"]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rob28: ")]
    # TMA, then GTM under both protocols (its targets differ): 3 of 3 steps, with elapsed time and what is left;
    # on a machine slow enough for 30 s to pass inside an attack, periodic lines name the batch in between
    whats = [line.split(" (")[1].split(")")[0] for line in lines]
    assert [w for w in whats if w.endswith(" done")] == ["TMA done", "GTM done"]
    assert all(w.endswith(" done") or " batch " in w for w in whats)
    assert lines[-1].startswith("rob28: 3/3 ") and "elapsed, about 0:00:00 left" in lines[-1]
    assert main(args + ["--json", str(tmp_path / "b.json"), "--quiet", "--seed", "2"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("rob28: ")]
    assert json.loads((tmp_path / "b.json").read_text())["seed"] == 2   # --seed is --eval-seed here


def test_run_with_the_strong_suite_publishes_to_its_own_board(tmp_path, capsys):
    lb = tmp_path / "lb"
    # GTT: the first APGD run breaks every query, so pruning spares the later runs and the search (the search
    # joining the worst case is tested in test_engine.py); the plan counts the nominal work
    args = ["run", "--defense", "vanilla", "--dataset", "digits", "--epochs", "1", "--suite", "rankaa28",
            "--attacks", "GTT", "--max-queries", "4", "--out", str(tmp_path / "run"), "--leaderboard-dir", str(lb),
            "--name", "ci", "--device", "cpu", "--quiet"]
    assert main(args + ["--plan"]) == 0
    # rankaa28 (version 3) per query: 33 PGD + 2 x 100 APGD + the diagnosis (1 gradient, 2 forwards) + 2 forwards
    # + 5,000 search forwards at a third of a pass = 1,903.3 passes (1903 as the plan rounds it)
    plan = capsys.readouterr().out
    assert "1 attacks over 1 query batches, 1903 PGD iterations" in plan
    assert "at most: the strong engine skips the queries already broken" in plan
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pgd: ERS" in out and "what rankaa28 adds" in out
    assert "| ARS | ARS rob28 |" in out  # the board beside the published suite's ARS (none here: empty cell)
    result = json.loads(next((tmp_path / "run").rglob("rankaa28.v3-*.json")).read_text())
    assert (result["suite"]["id"], result["suite"]["version"]) == ("rankaa28", 3)
    assert list(result["protocols"]) == ["corrected"]
    parts = result["extra"]["engine"]["parts"]["GTT"]["GTT"]
    assert sorted(result["extra"]["engine"]["parts"]) == ["GTT"] and parts["final"] <= parts["pgd"]
    assert parts["g232+s5000"] == parts["final"] == 0.0  # every query broken
    from robustbench_dml.leaderboard import LeaderboardStore

    board = LeaderboardStore(lb).load("digits", "rankaa28.v3")  # version 3's own board
    assert list(board["protocol"]) == ["corrected"] and list(board["suite_id"]) == ["rankaa28"]
    assert not (lb / "digits" / "rankaa28").exists()
    assert not (lb / "digits" / "rob28").exists()
    # a rob28 result of the same checkpoint is never put in one table with it
    published = tmp_path / "rob28.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--attacks", "GTT",
                 "--max-queries", "8", "--device", "cpu", "--json", str(published), "--quiet"]) == 0
    capsys.readouterr()
    strong = next((tmp_path / "run").rglob("rankaa28.v3-*.json"))
    assert main(["compare", str(published), str(strong)]) == 2
    assert "different suites (rankaa28.v3, rob28)" in _err_line(capsys)


@pytest.mark.slow
def test_the_224_path_end_to_end_on_a_cub_fixture(tmp_path, capsys):
    """`dmlbench run` on a CUB-layout fixture with ResNet-18 (no ImageNet weights), one epoch, a smoke evaluation,
    to a leaderboard row: the path the mission names, kept from rotting."""
    from fixtures_datasets import make_cub

    make_cub(tmp_path / "data", per_class=4)
    lb = tmp_path / "lb"
    args = ["run", "--defense", "ca_tride", "--dataset", "cub", "--data-root", str(tmp_path / "data"),
            "--backbone", "resnet18", "--no-pretrained", "--epochs", "1", "--batch-size", "4",
            "--embedding-dim", "16", "--set", "steps=2", "--attacks", "GTT,ES", "--max-queries", "2",
            "--out", str(tmp_path / "run"), "--leaderboard-dir", str(lb), "--name", "ci", "--device", "cpu"]
    assert main(args + ["--plan"]) == 0                      # the plan: configuration, work, estimate; no compute
    plan = capsys.readouterr().out
    assert json.loads(plan[:plan.index("\nplan: ")])["backbone"] == "resnet18"
    # training: one epoch of SPC-2 batches over the 12 training images (3 classes x 4); GTT and ES over one batch
    # of 2 queries, 32 PGD steps + the clean pass each
    assert "plan: training: 3 steps" in plan and "2 attacks over 1 query batches, 66 PGD iterations" in plan
    assert "at most" not in plan  # the published suite does all its work
    assert "a GPU is expected" in plan and not (tmp_path / "run").exists() and not lb.exists()
    assert main(args + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert "published as partial" in out and "ci (partial suite)" in out
    from robustbench_dml.leaderboard import LeaderboardStore

    board = LeaderboardStore(lb).load("cub", "rob224")
    assert sorted(board["protocol"]) == ["corrected", "robrank"] and not board["eligible"].any()
    assert set(board["backbone"]) == {"resnet18"} and set(board["defense"]) == {"ca_tride"}
    assert board["GTT"].notna().all() and board["ES:R"].notna().all() and board["CA+"].isna().all()
