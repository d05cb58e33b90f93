"""The reliability promises under hostile input: one line on stderr, exit 2, nothing created, changed or deleted;
no command removes what it did not create; a falsified score is never published; versions are immutable; one seed
gives one set of weights at the default thread count (separate processes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustbench_dml import backbones
from robustbench_dml.checkpoint import read_meta, save_checkpoint
from robustbench_dml.cli.main import main
from robustbench_dml.errors import UserError
from robustbench_dml.leaderboard import LeaderboardStore, Record, record_from_result


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch CANARY_RAN",))


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its content (a folder maps to "dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A working folder with a good checkpoint, damaged ones, a state dict, a user's folder and files."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = backbones.create("c2f2", embedding_dim=8, in_channels=1)
    good = save_checkpoint(tmp_path / "good", model, {"dataset": "digits", "defense": "vanilla"})
    for name, change in (("dim_neg", {"embedding_dim": -1}), ("dim_huge", {"embedding_dim": 10 ** 9}),
                         ("kwargs_list", {"backbone_kwargs": [1, 2]}), ("dim_str", {"embedding_dim": "8"})):
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
        meta = {**json.loads((good / "meta.json").read_text()), **change}
        (d / "meta.json").write_text(json.dumps(meta))
    nan_model = backbones.create("c2f2", embedding_dim=8, in_channels=1)
    with torch.no_grad():
        nan_model.head.weight.fill_(float("nan"))
    save_checkpoint(tmp_path / "nan", nan_model, {"dataset": "digits", "defense": "vanilla"})
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save({"state_dict": model.state_dict(), "x": 1}, tmp_path / "nested.pt")
    with open(tmp_path / "hostile.pt", "wb") as f:
        import pickle

        pickle.dump({"w": _Payload()}, f, protocol=2)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("my thesis\n")
    (tmp_path / "notes.md").write_text("keep me\n")
    (tmp_path / "afile").write_text("a file, not a folder\n")
    return tmp_path


E = ["evaluate", "--checkpoint"]
BAD = {
    # train / run: option values
    "train seed 2**70": ["train", "--seed", str(2**70), "--out", "r"],
    "train seed negative": ["train", "--seed", "-1", "--out", "r"],
    "run eval seed 2**31": ["run", "--eval-seed", str(2**31), "--out", "r"],
    "train lr inf": ["train", "--lr", "inf", "--out", "r"],
    "train lr nan": ["train", "--lr", "nan", "--out", "r"],
    "train lr negative": ["train", "--lr", "-1", "--out", "r"],
    "train weight decay inf": ["train", "--weight-decay", "inf", "--out", "r"],
    "train margin 1e999": ["train", "--set", "margin=1e999", "--out", "r"],
    "train margin string": ["train", "--set", 'margin="abc"', "--out", "r"],
    "train margin bool": ["train", "--set", "margin=true", "--out", "r"],
    "train steps float": ["train", "--defense", "est", "--set", "steps=2.5", "--out", "r"],
    "train eps string": ["train", "--defense", "est", "--set", 'eps="abc"', "--out", "r"],
    "train unknown option": ["train", "--set", "bogus=1", "--out", "r"],
    "train set without =": ["train", "--set", "margin", "--out", "r"],
    "train threads -1": ["train", "--threads", "-1", "--out", "r"],
    "train threads 0": ["train", "--threads", "0", "--out", "r"],
    "train epochs 0": ["train", "--epochs", "0", "--out", "r"],
    "train epochs text": ["train", "--epochs", "many", "--out", "r"],
    "train batch negative": ["train", "--batch-size", "-3", "--out", "r"],
    "train embedding 0": ["train", "--embedding-dim", "0", "--out", "r"],
    "train subset 0": ["train", "--train-subset", "0", "--out", "r"],
    "train unknown defense": ["train", "--defense", "nope", "--out", "r"],
    "train unknown dataset": ["train", "--dataset", "nope", "--out", "r"],
    "train missing data": ["train", "--dataset", "fashion", "--data-root", "nowhere", "--out", "r"],
    "train cuda absent": ["train", "--device", "cuda", "--out", "r"],
    "train bad device": ["train", "--device", "tpu9", "--out", "r"],
    "train lam negative": ["train", "--defense", "ca_tride", "--set", "lam=-1", "--out", "r"],
    "train weighting unknown": ["train", "--defense", "ca_tride", "--set", "weighting=slide", "--out", "r"],
    "train mode unknown": ["train", "--defense", "ca_tride", "--set", "mode=both", "--out", "r"],
    "train backbone mismatch": ["train", "--backbone", "resnet18", "--no-pretrained", "--out", "r"],
    "train out is a file": ["train", "--out", "afile"],
    "run lr inf": ["run", "--lr", "inf", "--out", "r"],
    "run name with a newline": ["run", "--name", "a\nb", "--out", "r"],
    "run unknown suite": ["run", "--suite", "rankaa", "--out", "r"],
    "run rankaa224 on digits": ["run", "--suite", "rankaa224", "--out", "r"],
    # evaluate: damaged checkpoints and options
    "evaluate missing checkpoint": E + ["missing"],
    "evaluate embedding_dim -1": E + ["dim_neg"],
    "evaluate embedding_dim 1e9": E + ["dim_huge"],
    "evaluate embedding_dim string": E + ["dim_str"],
    "evaluate backbone_kwargs list": E + ["kwargs_list"],
    "evaluate nan weights": E + ["nan"],
    "evaluate unknown suite": E + ["good", "--suite", "nope"],
    "evaluate rob224 on 28x28": E + ["good", "--suite", "rob224"],
    "evaluate rankaa224 on 28x28": E + ["good", "--suite", "rankaa224"],
    "evaluate rankaa28 robrank-compat": E + ["good", "--suite", "rankaa28", "--robrank-compat"],
    "evaluate unknown attack": E + ["good", "--attacks", "XX+"],
    "evaluate eps inf": E + ["good", "--eps", "inf"],
    "evaluate max queries 0": E + ["good", "--max-queries", "0"],
    "evaluate eot on rob28": E + ["good", "--eot", "4"],
    "evaluate eot 0": E + ["good", "--suite", "rankaa28", "--eot", "0"],
    "evaluate json into a folder": E + ["good", "--json", "thesis"],
    "evaluate json exists": E + ["good", "--json", "notes.md"],
    "evaluate json into a missing folder": E + ["good", "--json", "nowhere/e.json"],
    # submit
    "submit missing checkpoint": ["submit", "missing"],
    "submit nan weights": ["submit", "nan"],
    "submit unknown suite": ["submit", "good", "--suite", "nope"],
    "submit name with a newline": ["submit", "good", "--name", "a\nb"],
    # convert
    "convert onto a user folder": ["convert", "state.pt", "--backbone", "c2f2", "--dataset", "digits",
                                   "--embedding-dim", "8", "--out", "thesis"],
    "convert overwrite a user folder": ["convert", "state.pt", "--backbone", "c2f2", "--dataset", "digits",
                                        "--embedding-dim", "8", "--out", "thesis", "--overwrite"],
    "convert onto a checkpoint": ["convert", "state.pt", "--backbone", "c2f2", "--dataset", "digits",
                                  "--embedding-dim", "8", "--out", "good"],
    "convert missing file": ["convert", "none.pt", "--backbone", "c2f2", "--dataset", "digits", "--out", "c"],
    "convert hostile pickle": ["convert", "hostile.pt", "--backbone", "c2f2", "--dataset", "digits", "--out", "c"],
    "convert nested without key": ["convert", "nested.pt", "--backbone", "c2f2", "--dataset", "digits",
                                   "--embedding-dim", "8", "--out", "c"],
    "convert wrong dim": ["convert", "state.pt", "--backbone", "c2f2", "--dataset", "digits", "--embedding-dim", "16",
                          "--out", "c"],
    "convert unknown backbone": ["convert", "state.pt", "--backbone", "vit", "--dataset", "digits", "--out", "c"],
    # leaderboard / compare / plot / list
    "leaderboard unknown dataset": ["leaderboard", "show", "--dataset", "nope"],
    "leaderboard empty": ["leaderboard", "show", "--dataset", "digits", "--no-official"],
    "leaderboard bad version": ["leaderboard", "show", "--dataset", "digits", "--version", "abc"],
    "leaderboard diff without range": ["leaderboard", "diff", "--dataset", "digits"],
    "leaderboard output exists": ["leaderboard", "export", "--dataset", "fashion", "--output", "notes.md"],
    "leaderboard output folder": ["leaderboard", "export", "--dataset", "fashion", "--output", "thesis"],
    "leaderboard unknown action": ["leaderboard", "build", "--dataset", "digits"],
    "leaderboard rebuild nothing": ["leaderboard", "rebuild", "--dataset", "digits"],
    "compare missing": ["compare", "missing"],
    "plot missing": ["plot", "resistance", "missing", "--output", "p.png"],
    "plot output exists": ["plot", "resistance", "good", "--output", "notes.md"],
    "list unknown kind": ["list", "things"],
    "no command": [],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_leaves_everything_as_it_was(world, capsys, case):
    before = _tree(world)
    try:
        rc = main(BAD[case])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (case, err)
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("dmlbench"), err
    assert _tree(world) == before, f"{case} changed files"
    assert not (world / "CANARY_RAN").exists()


def _png_declaring(width: int, height: int) -> bytes:
    """The header of a PNG that declares ``width`` x ``height`` pixels (no pixel data: nothing is allocated)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


DAMAGED_CUB = {  # damage -> what the one line says
    "an empty jpg": "cannot decode image",
    "a text file named .jpg": "cannot decode image",
    "an entry leaving the dataset folder": "points outside the dataset folder",
    "a png declaring 40000x40000 pixels": "declares more than",
    "a png declaring 10000x10000 pixels": "declares more than",
    "pretrained weights that are a text file": "is not a torch weights file",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_CUB))
def test_a_damaged_image_dataset_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                                   damage):
    from fixtures_datasets import make_cub

    monkeypatch.chdir(tmp_path)
    cub = make_cub(tmp_path / "cub")
    victim = cub["train"][1][0]  # an image of the training split
    extra = ["--no-pretrained"]
    if damage == "an empty jpg":
        victim.write_bytes(b"")
    elif damage == "a text file named .jpg":
        victim.write_text("these are my notes, not a photo\n")
    elif damage == "an entry leaving the dataset folder":
        index = cub["folder"] / "images.txt"
        rel = victim.relative_to(cub["folder"] / "images").as_posix()
        index.write_text(index.read_text().replace(rel, "../../../../../../etc/hostname"))
    elif damage.startswith("a png declaring"):
        side = int(damage.split()[3].split("x")[0])
        victim.write_bytes(_png_declaring(side, side))
    else:
        (tmp_path / "weights.pth").write_text("not weights\n")
        extra = ["--pretrained-weights", "weights.pth"]
    before = _tree(tmp_path)
    rc = main(["train", "--dataset", "cub", "--data-root", "cub", "--epochs", "1", "--out", "run", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and DAMAGED_CUB[damage] in err and err.count("\n") == 0, err
    assert _tree(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_run_folder_that_holds_a_run_is_refused_before_the_plan_measures_anything(tmp_path, capsys, command):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "history.jsonl").write_text("{}\n")
    assert main([command, "--out", str(tmp_path / "r")]) == 2
    out = capsys.readouterr()
    assert "already holds a run; pass --resume" in out.err and "plan:" not in out.out


def test_a_folder_named_like_a_checkpoint_file_is_not_a_checkpoint_and_os_errors_name_their_cause(world, capsys):
    # convert took a folder holding a directory called meta.json for a checkpoint (and --overwrite replaced it)
    (world / "odd" / "meta.json").mkdir(parents=True)
    before = _tree(world)
    for extra in ([], ["--overwrite"]):
        assert main(["convert", "state.pt", "--backbone", "c2f2", "--dataset", "digits", "--embedding-dim", "8",
                     "--out", "odd", *extra]) == 2
        assert "already holds meta.json, which is not ours" in capsys.readouterr().err
    assert _tree(world) == before
    # an operating-system error is worded by its cause, not as "free space" whatever it was
    from robustbench_dml.cli import main as main_mod

    assert "a folder is where a file is expected" in main_mod._remedy(IsADirectoryError(21, "Is a directory"))
    assert "free space" in main_mod._remedy(OSError(28, "No space left on device"))


def test_convert_never_deletes_a_user_folder_and_overwrites_only_its_own_checkpoint(world, capsys):
    args = ["convert", "state.pt", "--backbone", "c2f2", "--dataset", "digits", "--embedding-dim", "8"]
    assert main(args + ["--out", "new"]) == 0
    first = read_meta(world / "new")
    assert main(args + ["--out", "new"]) == 2  # an existing checkpoint needs --overwrite
    assert main(args + ["--out", "new", "--overwrite"]) == 0
    assert sorted(p.name for p in (world / "new").iterdir()) == ["meta.json", "model.safetensors"]
    assert read_meta(world / "new")["weights_sha256"] == first["weights_sha256"]
    assert (world / "thesis" / "chapter1.tex").read_text() == "my thesis\n"
    assert not [p for p in world.iterdir() if p.name.startswith(".new")]  # no temp or old folder left


def _eval(i: int) -> dict:
    from test_leaderboard import make_eval

    return make_eval(i, protocols=("corrected", "robrank"))


def test_a_falsified_score_is_never_published(tmp_path):
    store = LeaderboardStore(tmp_path)
    a = record_from_result(_eval(1), submitter="a", created="2025-01-01")
    store.add_record(a)
    path = store.record_path(a)
    data = json.loads(path.read_text())
    data["protocols"]["robrank"]["ers"] = 50.0  # the true value is about 30
    path.write_text(json.dumps(data))
    b = record_from_result(_eval(2), submitter="b", created="2025-01-01")
    with pytest.raises(UserError, match="does not match the manifest|not what its raw"):
        store.add_record(b)
    assert store.latest_version("digits", "rob28") == 1
    # even with the manifest's hash made to agree, the score is re-derived from the raw results
    manifest_path = store.manifest_path("digits", "rob28", 1)
    manifest = json.loads(manifest_path.read_text())
    manifest["records"][a.record_id] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not what its raw"):
        store.add_record(b)
    # a forged "published" row is refused too, while the papers' own rows still publish
    from robustbench_dml.leaderboard import build_reference_store

    assert build_reference_store(tmp_path / "reference")
    data["protocols"]["robrank"]["ers"] = a.scores("robrank").ers
    data.update(reported=True)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="reported"):
        store.rebuild("digits", "rob28")


def test_compare_refuses_edited_and_out_of_range_results(tmp_path, capsys):
    # the probe's R@1 150 and CA+ 250 were shown bold as the best, and a result's dataset could be renamed unseen
    from robustbench_dml.results import EvaluationResult

    good = tmp_path / "good.json"
    EvaluationResult.from_dict(_eval(1)).to_json(good)
    assert main(["compare", str(good)]) == 0
    capsys.readouterr()
    written = json.loads(good.read_text())
    renamed = {**written, "checkpoint": {**written["checkpoint"],
                                         "meta": {**written["checkpoint"]["meta"], "dataset": "fashion"}}}
    legacy = {k: v for k, v in written.items() if k != "sha256"}  # as written before results carried a digest
    r1 = {**legacy, "benign": {**legacy["benign"], "R@1": 150.0}}
    ca = json.loads(json.dumps(legacy))
    for block in ca["protocols"].values():
        block["per_query"]["CA+"] = [250.0] * legacy["num_queries"]
        block["raw"]["CA+"], block["scores"] = 250.0, {}
    for name, data, message in (("renamed", renamed, "was edited after `dmlbench evaluate` wrote it"),
                                ("r1", r1, "R@1 = 150.0 lies outside its range [0, 100]"),
                                ("ca", ca, "a per-query CA+ lies outside its range [0, 100]")):
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(data))
        assert main(["compare", str(good), str(bad)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, name


def test_an_edited_interval_is_refused():
    ev = _eval(3)
    ev["protocols"]["robrank"]["scores"]["ERS_ci"] = [0.0, 99.0]
    with pytest.raises(UserError, match="interval"):
        record_from_result(ev, submitter="x")


def test_a_lost_pointer_never_reuses_a_published_version(tmp_path):
    store = LeaderboardStore(tmp_path)
    store.add_record(record_from_result(_eval(1), submitter="a", created="2025-01-01"))
    v1 = store.parquet_path("digits", "rob28", 1).read_bytes()
    (tmp_path / "digits" / "rob28" / "latest").unlink()
    with pytest.raises(UserError, match="echo 1 >"):
        store.add_record(record_from_result(_eval(2), submitter="b", created="2025-01-01"))
    assert store.parquet_path("digits", "rob28", 1).read_bytes() == v1
    assert not store.parquet_path("digits", "rob28", 2).exists()


def test_orphan_temp_files_of_killed_writers_are_removed_and_only_those(tmp_path):
    store = LeaderboardStore(tmp_path)
    store.add_record(record_from_result(_eval(1), submitter="a", created="2025-01-01"))
    board = tmp_path / "digits" / "rob28"
    orphans = [board / ".v2.parquet.abc123.tmp", board / ".latest.x_9.tmp"]
    foreign = board / ".my-notes.tmp"
    for p in orphans + [foreign]:
        p.write_bytes(b"partial")
    store.add_record(record_from_result(_eval(2), submitter="b", created="2025-01-01"))
    assert not any(p.exists() for p in orphans) and foreign.exists()


def test_the_store_refuses_before_any_compute_when_it_cannot_write(tmp_path):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store folder should be")
    with pytest.raises(UserError, match="not writable"):
        LeaderboardStore(blocker).check_writable("digits", "rob28")
    if Path("/dev/full").exists():  # a full device: writes fail with ENOSPC
        with pytest.raises(OSError):
            Path("/dev/full").write_bytes(b"x" * 8192)


def test_the_store_check_tolerates_another_process_creating_its_folders(tmp_path, monkeypatch):
    # the race two torchrun ranks (or two runs) met: a folder missing when looked at, made by another process
    # before this one's mkdir; it is no error, and the folder is the other process's, so it stays
    store = LeaderboardStore(tmp_path / "lb")
    board = store.board_dir("digits", "rob28")
    real_mkdir = Path.mkdir

    def mkdir_after_another_process(self, *args, **kwargs):
        if self == board and not self.exists():
            subprocess.run(["mkdir", str(self)], check=True)  # the other process wins the race
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_after_another_process)
    store.check_writable("digits", "rob28")
    assert board.is_dir() and not any(board.iterdir())  # the other's folder kept, nothing of ours left in it
    assert not store.records_dir("digits", "rob28").exists()  # what this check made itself is removed


def test_a_diverging_training_stops_with_one_line(tmp_path, capsys):
    rc = main(["train", "--lr", "1e30", "--epochs", "1", "--out", str(tmp_path / "r"), "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "diverged" in err and "\n" not in err


@pytest.mark.slow
def test_same_seed_same_weights_with_the_default_threads_in_separate_processes(tmp_path):
    """Two fresh processes, default thread count (all cores), seed 0: identical weight hashes."""
    shas = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "robustbench_dml.cli.main", "train", "--epochs", "1",
                        "--out", str(tmp_path / name)], check=True, capture_output=True, timeout=600)
        shas.append(read_meta(tmp_path / name / "checkpoint")["weights_sha256"])
    assert shas[0] == shas[1]


_KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_leaderboard import make_eval
from robustbench_dml.leaderboard import LeaderboardStore, Record, record_from_result
import robustbench_dml.files as files
calls = [0]
real = files._replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)  # die at this write point, temp file written, not yet renamed
    real(src, dst)
files._replace = replace
LeaderboardStore({root!r}).add_record(record_from_result(make_eval(2), submitter="b", created="2025-01-01"))
"""


@pytest.mark.parametrize("write_point", [1, 2, 3, 4])  # record, parquet, manifest, pointer
def test_a_publisher_killed_at_each_write_point_leaves_the_previous_version_intact(tmp_path, write_point):
    store = LeaderboardStore(tmp_path)
    store.add_record(record_from_result(_eval(1), submitter="a", created="2025-01-01"))
    v1 = store.load("digits", "rob28")
    code = _KILLER.format(tests=str(Path(__file__).parent), n=write_point, root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert store.verify("digits", "rob28") == [1]
    assert store.load("digits", "rob28").equals(v1)
    assert list(tmp_path.rglob("*.tmp"))  # the killed writer's temp file is there ...
    version, added = store.add_record(record_from_result(_eval(2), submitter="b", created="2025-01-01"))
    assert (version, added) == (2, True) and store.verify("digits", "rob28") == [1, 2]
    assert not list(tmp_path.rglob("*.tmp"))  # ... and the next publish removed it


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it, even when the test runner was started in the background
    (a non-interactive shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: the training the signal tests interrupt (digits, three epochs, one thread)
_TRAIN = [sys.executable, "-m", "robustbench_dml.cli.main", "train", "--epochs", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def uninterrupted_weights(tmp_path_factory) -> str:
    """The weights sha256 of :data:`_TRAIN` run to the end without a signal (one run for every signal's test)."""
    out = tmp_path_factory.mktemp("full")
    full = subprocess.run(_TRAIN + ["--out", str(out / "run")], capture_output=True, timeout=600)
    assert full.returncode == 0, full.stderr.decode()[-500:]
    return read_meta(out / "run" / "checkpoint")["weights_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, line", [
    ("SIGINT", 130, "dmlbench: interrupted"),
    ("SIGTERM", 143, "dmlbench: terminated (SIGTERM); run the same command again to resume")])
def test_a_signal_stops_training_with_one_line_and_resume_gives_the_same_weights(tmp_path, sig, code, line,
                                                                                  uninterrupted_weights):
    # SIGTERM is what a batch scheduler sends: it unwinds as Ctrl-C does
    proc = subprocess.Popen(_TRAIN + ["--out", str(tmp_path / "cut")], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    history = tmp_path / "cut" / "history.jsonl"
    deadline = time.time() + 300
    while not (history.exists() and history.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == code and lines == [line], err.decode()[-500:]
    resumed = subprocess.run(_TRAIN + ["--out", str(tmp_path / "cut"), "--resume"], capture_output=True, timeout=600)
    assert resumed.returncode == 0
    assert read_meta(tmp_path / "cut" / "checkpoint")["weights_sha256"] == uninterrupted_weights


@pytest.mark.slow
def test_sigint_stops_an_evaluation_with_one_line_and_rerunning_resumes_to_the_same_numbers(tmp_path):
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                         {"dataset": "digits", "defense": "vanilla"})
    base = [sys.executable, "-m", "robustbench_dml.cli.main", "evaluate", "--checkpoint", str(ck), "--max-queries",
            "48", "--attacks", "CA+,QA+,TMA,GTT", "--device", "cpu"]
    for folder in ("a", "b"):  # --json goes into an existing folder
        (tmp_path / folder).mkdir()
    full = subprocess.run(base + ["--json", str(tmp_path / "a" / "r.json")], capture_output=True, timeout=600)
    assert full.returncode == 0, full.stderr.decode()[-500:]
    out = tmp_path / "b" / "r.json"
    proc = subprocess.Popen(base + ["--json", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    state = tmp_path / "b" / "state"
    deadline = time.time() + 300
    while not list(state.glob("*/*.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.decode().strip().splitlines() == ["dmlbench: interrupted"], \
        err.decode()[-500:]
    finished = sorted(p.name for p in state.glob("*/*.json"))
    assert finished and len(finished) < 4 and not out.exists()       # stopped part-way; no result written
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]       # no temp file left behind
    again = subprocess.run(base + ["--json", str(out)], capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-500:]
    a, b = (json.loads(p.read_text()) for p in (tmp_path / "a" / "r.json", out))
    assert a["protocols"] == b["protocols"] and a["benign"] == b["benign"]
    assert not state.exists()                                         # the finished evaluation's state went


@pytest.fixture
def full_disk(tmp_path):
    """A 512 KiB tmpfs filled to the last byte (skipped where mounting is not permitted)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError:  # ENOSPC: the disk is full
                pass
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


@pytest.mark.parametrize("command", ["train", "export", "submit", "evaluate-json"])
def test_a_full_disk_is_one_line_and_leaves_no_temp_files(full_disk, tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                         {"dataset": "digits", "defense": "vanilla"})
    argv = {
        "train": ["train", "--epochs", "1", "--threads", "1", "--out", str(full_disk / "run")],
        "export": ["leaderboard", "export", "--dataset", "fashion", "--output", str(full_disk / "t.md")],
        "submit": ["submit", str(ck), "--leaderboard-dir", str(full_disk / "lb")],
        "evaluate-json": ["evaluate", "--checkpoint", str(ck), "--max-queries", "8", "--attacks", "GTT",
                          "--json", str(full_disk / "r.json")],
    }[command]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("dmlbench: error:") and "\n" not in err, err
    assert _leftovers(full_disk) == []
    if command == "submit":
        assert "not writable" in err and not (full_disk / "lb").exists()  # refused before any compute


def _held(folder: Path) -> bool:
    """Whether another process holds ``folder``'s lock (the kernel's flock on the folder, as the commands take it)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if this test took it
    return False


@pytest.mark.slow
def test_a_second_process_training_into_the_same_folder_is_refused_in_one_line(tmp_path):
    # without the lock two trainings into one --out both exited 0, one run's weights beside both runs' mixed
    # history. The first process is caught holding the folder (stopped with SIGSTOP, then checked, so it cannot
    # finish in between on a fast machine) and the second, a real process, is refused in one line; once the first
    # is let go it completes a whole run, and the folder is free again (for --resume)
    run = tmp_path / "run"
    base = [sys.executable, "-m", "robustbench_dml.cli.main", "train", "--epochs", "2", "--threads", "1",
            "--out", str(run)]
    first = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held = False
    try:
        while first.poll() is None:
            os.kill(first.pid, signal.SIGSTOP)
            held = _held(run)
            if held:
                break
            os.kill(first.pid, signal.SIGCONT)
            time.sleep(0.01)
        assert held, "the first training ended before it was seen holding its folder"
        second = subprocess.run(base, capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=900)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"dmlbench: error: another process is training into {run}; wait for it to finish or choose another folder"]
    assert first.returncode == 0, err
    epochs = [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    again = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def _cli(cwd, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_dml.cli.main", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_no_file_a_command_reads_can_exhaust_the_machine(tmp_path):
    # what the probe did: meta.json, a result, a record and the weights as links to /dev/zero, a FIFO, a 2 MiB
    # meta.json; each is refused in one line from its type or size, before it is read (a read would never end or
    # would block)
    import torch

    torch.manual_seed(0)
    good = save_checkpoint(tmp_path / "good", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                           {"dataset": "digits", "defense": "vanilla"})

    def checkpoint(name: str, part: str, make) -> Path:
        ck = tmp_path / name
        ck.mkdir()
        for f in ("meta.json", "model.safetensors"):
            if f != part:
                (ck / f).write_bytes((good / f).read_bytes())
        make(ck / part)
        return ck

    zero = lambda p: p.symlink_to("/dev/zero")  # noqa: E731
    cases = {
        "meta as /dev/zero": (checkpoint("z", "meta.json", zero), "is not a regular file"),
        "meta as a FIFO": (checkpoint("f", "meta.json", os.mkfifo), "is not a regular file"),
        "meta of 2 MiB": (checkpoint("b", "meta.json", lambda p: os.truncate(p.touch() or p, 2 << 20)),
                          "more than the 1,048,576 a meta file may have"),
        "weights as /dev/zero": (checkpoint("w", "model.safetensors", zero), "is not a regular file"),
    }
    for case, (ck, match) in cases.items():
        out = _cli(tmp_path, "evaluate", "--checkpoint", str(ck), "--benign-only")
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and match in lines[0], (case, out.stderr[-300:])
    (tmp_path / "result.json").symlink_to("/dev/zero")
    out = _cli(tmp_path, "compare", "result.json")
    assert out.returncode == 2 and "is not a regular file" in out.stderr
    store = LeaderboardStore(tmp_path / "lb")
    rec = record_from_result(_eval(1), submitter="a", created="2025-01-01")
    store.add_record(rec)
    path = store.record_path(rec)
    path.unlink()
    path.symlink_to("/dev/zero")
    out = _cli(tmp_path, "leaderboard", "rebuild", "--dataset", "digits", "--leaderboard-dir", "lb")
    assert out.returncode == 2 and "is not a regular file" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_wrong_successes_are_refused(tmp_path, capsys):
    # int8 weights whose sha256 matches meta.json, --attacks naming nothing, NaN weights given to convert, an IDX
    # header declaring an absurd shape: each was accepted (or misworded) and is now refused in one line
    import torch
    from safetensors.torch import save_file

    from robustbench_dml.files import sha256_file

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                         {"dataset": "digits", "defense": "vanilla"})
    state = {k: v.to(torch.int8) for k, v in backbones.create("c2f2", embedding_dim=8, in_channels=1)
             .state_dict().items()}
    save_file(state, str(ck / "model.safetensors"))
    meta = json.loads((ck / "meta.json").read_text())
    meta["weights_sha256"] = sha256_file(ck / "model.safetensors")
    (ck / "meta.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--checkpoint", str(ck), "--benign-only"]) == 2
    assert "is int8, expected float32" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ck), "--attacks", "", "--json", str(tmp_path / "e.json")]) == 2
    assert "--attacks names no attack" in capsys.readouterr().err
    assert main(["run", "--attacks", " , ", "--out", str(tmp_path / "r")]) == 2  # before any training
    assert "--attacks names no attack" in capsys.readouterr().err and not (tmp_path / "r").exists()
    net = backbones.create("c2f2", embedding_dim=8, in_channels=1).state_dict()
    net["head.weight"][0, 0] = float("nan")
    torch.save(net, tmp_path / "nan.pt")
    assert main(["convert", str(tmp_path / "nan.pt"), "--backbone", "c2f2", "--dataset", "digits",
                 "--out", str(tmp_path / "c")]) == 2
    assert "head.weight holds NaN or infinite values" in capsys.readouterr().err and not (tmp_path / "c").exists()
    from robustbench_dml.datasets.idx import parse_idx

    huge = bytes([0, 0, 8, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 3 + b"\0" * 16
    with pytest.raises(UserError, match=r"needs 79228162458924105385300197391;"):  # the declared size, not negative
        parse_idx(huge, 0x00000803, tmp_path / "x", "MNIST", "")


def test_an_output_is_never_one_of_the_inputs_nor_inside_a_checkpoint_or_a_store(tmp_path, capsys):
    # --overwrite replaced a checkpoint's meta.json, turned a store's immutable version into a CSV and let compare
    # replace its own input; each is refused in one line and every file stays as it was
    import torch

    from test_leaderboard import make_eval

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", backbones.create("c2f2", embedding_dim=8, in_channels=1),
                         {"dataset": "digits", "defense": "vanilla"})
    result = tmp_path / "r.json"
    result.write_text(json.dumps(make_eval(1)))
    store = LeaderboardStore(tmp_path / "lb")
    store.add_record(record_from_result(_eval(1), submitter="a", created="2025-01-01"))
    parquet = tmp_path / "lb" / "digits" / "rob28" / "v1.parquet"
    before = _tree(tmp_path)
    cases = [
        (["evaluate", "--checkpoint", str(ck), "--benign-only", "--json", str(ck / "meta.json"), "--overwrite"],
         "inside the checkpoint folder"),
        (["leaderboard", "export", "--dataset", "digits", "--leaderboard-dir", str(tmp_path / "lb"), "--format",
          "csv", "--output", str(parquet), "--overwrite", "--no-official"], "inside the leaderboard store"),
        (["compare", str(result), "--output", str(result), "--overwrite"], "is one of this command's inputs"),
        (["plot", "resistance", str(result), "--output", str(ck / "x.png")], "inside the checkpoint folder"),
    ]
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_sibling_checkpoints_keep_their_own_results_and_none_is_replaced_silently(tmp_path, capsys):
    import torch

    from robustbench_dml.cli.compare import find_result

    torch.manual_seed(0)
    for name, dim in (("a", 8), ("b", 16)):
        save_checkpoint(tmp_path / "pair" / name, backbones.create("c2f2", embedding_dim=dim, in_channels=1),
                        {"dataset": "digits", "defense": "vanilla"})
        assert main(["evaluate", "--checkpoint", str(tmp_path / "pair" / name), "--benign-only"]) == 0
    results = {n: json.loads((tmp_path / "pair" / "eval" / n / "benign.json").read_text()) for n in "ab"}
    assert results["a"]["sha256"] != results["b"]["sha256"]  # each checkpoint's own file
    before = _tree(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pair" / "a"), "--benign-only"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and _tree(tmp_path) == before
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pair" / "a"), "--benign-only", "--overwrite"]) == 0
    # compare finds a checkpoint's own result, never its sibling's
    (tmp_path / "pair" / "eval" / "b" / "rob28.json").write_text("{}")
    assert find_result(tmp_path / "pair" / "b", None) == tmp_path / "pair" / "eval" / "b" / "rob28.json"
    with pytest.raises(UserError, match="no rob28/rob224 evaluation found"):
        find_result(tmp_path / "pair" / "a", None)
