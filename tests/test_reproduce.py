"""Recipes, the official boards and ``dmlbench reproduce``: a row rebuilt from its record matches it."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from robustbench_dml.cli.common import train_config
from robustbench_dml.cli.main import build_parser
from robustbench_dml.config import TrainConfig
from robustbench_dml.errors import UserError
from robustbench_dml.evaluation import EvalConfig
from robustbench_dml.leaderboard.official import (OFFICIAL_SOURCE, entry_file, entry_history, entry_records,
                                                  official_histories, official_records, write_entry)
from robustbench_dml.leaderboard.recipes import Recipe, environment, eval_settings, evaluate_argv, train_argv
from robustbench_dml.leaderboard.frames import records_to_frame
from robustbench_dml.leaderboard.tables import render

SHA = "ab" * 32


def _dmlbench(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_dml.cli.main", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("cfg", [
    TrainConfig(defense="ca_tride", dataset="fashion", data_root="/data/fashion mnist", seed=3, threads=1,
                train_subset=6000, defense_params={"steps": 8, "weighting": "released", "lam": 0.5}),
    TrainConfig(defense="vanilla", dataset="digits", epochs=2, batch_size=32, lr=0.002, weight_decay=0.0,
                embedding_dim=128, pretrained=False, backbone="c2f2"),
])
def test_the_recipes_commands_parse_back_to_its_configurations(cfg):
    # the rendered command, read by the real command-line parser, gives the same configuration: what a user
    # copies from a board trains what the row trained
    argv = shlex.split(shlex.join(train_argv(cfg.to_dict(), "out dir")))
    assert argv[:2] == ["dmlbench", "train"]
    args = build_parser().parse_args(argv[1:])
    assert dataclasses.replace(train_config(args), device="auto") == cfg and args.out == "out dir"
    ev = EvalConfig("rankaa28", attacks=("CA+", "GTT"), max_queries=100, seed=2, eps=0.1)
    args = build_parser().parse_args(evaluate_argv(eval_settings(ev), "ck", "e.json")[1:])
    back = EvalConfig(args.suite, attacks=tuple(args.attacks.split(",")), max_queries=args.max_queries,
                      seed=args.eval_seed, eps=args.eps, robrank_compat=args.robrank_compat, numerics=args.numerics)
    # the recipe pins the suite's version (a bare id would name a later version once there is one)
    assert args.suite == "rankaa28.v3" and back == dataclasses.replace(ev, suite="rankaa28.v3")
    assert back.suite_obj == ev.suite_obj and args.checkpoint == "ck" and args.json == "e.json"


def test_a_recipe_is_validated_and_round_trips():
    r = Recipe.of(TrainConfig(seed=1), EvalConfig("rob28"), SHA, budget="cpu")
    assert Recipe.from_json(r.to_json()) == r
    assert r.data_sha256.keys() == {"train", "test"} and r.environment["torch"]
    # MKL's mode decides a few attack outcomes (an official row measured without it differed at 2 of 896 queries):
    # the test session asked for the reproducible one at start-up, as dmlbench does
    import torch

    assert r.environment["cpu_blas"] == ("AUTO,STRICT" if torch.backends.mkl.is_available() else "none")
    assert r.eval_config() == EvalConfig("rob28") and r.train_config(data_root="/x").data_root == "/x"
    # a result made on another machine keeps that machine's description (an entry rewritten here, for a training
    # log, must not claim this CPU evaluated it)
    there = {**r.environment, "cpu": "another CPU", "torch": "0.0"}
    assert Recipe.of(TrainConfig(seed=1), EvalConfig("rob28"), SHA, budget="cpu", env=there).environment == there
    bad = json.loads(r.to_json())
    for change, match in (({"weights_sha256": "12"}, "sha256"), ({"budget": "gpu"}, "budget"),
                          ({"schema": 9}, "schema"), ({"evaluate": {"suite": "rob28", "speed": 1}}, "unknown"),
                          ({"train": {"defense": "vanilla", "epochs": 0}}, "epochs")):
        with pytest.raises(UserError, match=match):
            Recipe.from_json(json.dumps({**bad, **change}))
    with pytest.raises(UserError, match="device"):
        train_argv({**r.train, "device": "cuda"}, "x")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """``dmlbench run`` of a one-epoch digits model, two attacks on 16 queries, into a fresh store."""
    root = tmp_path_factory.mktemp("tiny")
    out = _dmlbench("run", "--dataset", "digits", "--epochs", "1", "--train-subset", "300", "--threads", "1",
                    "--attacks", "GTT,ES", "--max-queries", "16", "--out", "run", "--name", "tester", "--quiet",
                    cwd=root)
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.slow
def test_a_run_records_its_recipe_and_reproduce_rebuilds_it_exactly(tiny_run):
    records = sorted((tiny_run / "leaderboards" / "records").glob("*/*/*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    recipe = Recipe.from_json(record["recipe"])
    assert recipe.weights_sha256 == record["checkpoint_sha256"] and recipe.train["train_subset"] == 300
    assert recipe.evaluate["attacks"] == ["GTT", "ES"] and recipe.evaluate["max_queries"] == 16
    rid = records[0].stem
    out = _dmlbench("reproduce", rid[:8], "--out", "again", "--quiet", cwd=tiny_run)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"reproduced {rid}" in out.stdout and "recipe: dmlbench train --defense vanilla" in out.stdout
    assert (tiny_run / "again" / "checkpoint" / "model.safetensors").read_bytes() == \
        (tiny_run / "run" / "checkpoint" / "model.safetensors").read_bytes()
    # a second rebuild into the same folder is refused before anything runs; so are unknown and short ids
    for argv, match in (((rid, "--out", "again"), "already exists"), (("ffffffffff",), "no row"),
                        (("ab",), "at least 6")):
        bad = _dmlbench("reproduce", *argv, cwd=tiny_run)
        assert bad.returncode == 2 and match in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_reproduce_names_every_difference_and_the_environment(tiny_run, tmp_path):
    # the same row with a recorded score changed (a record of another machine, say): the rebuild reports the
    # difference, places ERS against the recorded interval and exits 1
    from robustbench_dml.cli.reproduce import compare
    from robustbench_dml.leaderboard.records import read_record

    path = next((tiny_run / "leaderboards" / "records").glob("*/*/*.json"))
    rec = read_record(path)
    block = rec.protocols["corrected"]
    other = dataclasses.replace(rec, protocols={**rec.protocols,
                                                "corrected": dataclasses.replace(block, gtt=block.gtt + 1.0)})
    assert compare(rec, rec) == []
    lines = compare(other, rec)
    assert lines == [f"corrected GTT: recorded {block.gtt + 1.0:g}, rebuilt {block.gtt:g}"]
    moved = dataclasses.replace(rec, checkpoint_sha256="0" * 64)
    assert compare(moved, rec)[0].startswith("weights sha256: recorded 0000000000000000...")


@pytest.mark.slow
def test_an_official_entry_is_re_derived_from_its_evidence_at_every_load(tiny_run, tmp_path):
    result = json.loads(next((tiny_run / "run" / "eval").glob("*.json")).read_text())
    cfg = TrainConfig(dataset="digits", epochs=1, train_subset=300, threads=1)
    sha = result["checkpoint"]["sha256"]
    # the evaluation settings an entry records are read from the result itself (what `run` was asked for)
    assert EvalConfig.from_result(result) == EvalConfig("rob28", attacks=("GTT", "ES"), max_queries=16)
    history = [json.loads(line) for line in (tiny_run / "run" / "history.jsonl").read_text().splitlines()]
    path = write_entry(entry_file("digits", "ca_tride[released]", 0, root=tmp_path),
                       model="ca_tride[released]-seed0", recipe_train=cfg, weights_sha256=sha, budget="cpu",
                       evaluations=[result], created="2026-12-06", history=history)
    assert path == tmp_path / "digits" / "ca_tride-released-seed0.json.gz"  # a file name without brackets
    assert entry_history(path) == history and [h["epoch"] for h in history] == [1]  # the training's own log
    assert official_histories("digits", root=tmp_path) == official_histories(root=tmp_path) == {sha: history}
    assert entry_history(write_entry(tmp_path / "bare.json.gz", model="bare", recipe_train=cfg, weights_sha256=sha,
                                     budget="cpu", evaluations=[result], created="2026-12-06")) == []
    there = {**environment(), "cpu": "another CPU"}
    moved = write_entry(tmp_path / "moved.json.gz", model="moved", recipe_train=cfg, weights_sha256=sha,
                        budget="cpu", evaluations=[result], created="2026-12-06", environments=[there])
    assert [Recipe.from_json(r.recipe).environment for r in entry_records(moved)] == [there]
    assert {Recipe.from_json(r.recipe).environment["cpu"] for r in entry_records(path)} == {environment()["cpu"]}
    (rec,) = official_records("digits", "rob28", root=tmp_path)
    assert entry_records(path) == [rec] and entry_records(path, board="rankaa28.v2") == []
    assert rec.source == OFFICIAL_SOURCE and rec.budget == "cpu" and rec.submitter == "robustbench-dml"
    assert Recipe.from_json(rec.recipe).train_config() == cfg
    frame = records_to_frame([rec])
    table = render(frame[frame["protocol"] == "corrected"], "md")
    assert "robustbench-dml (official, seed 0, 16 queries)" in table and "| cpu |" in table and "Budget" in table
    # an edited score in the shipped evidence is refused, not shown: by the result's digest, and by the derivation
    # when the digest is dropped too
    entry = json.loads(gzip.decompress(path.read_bytes()))
    entry["evaluations"][0]["result"]["protocols"]["corrected"]["scores"]["worst_case"] -= 5
    path.write_bytes(gzip.compress(json.dumps(entry).encode()))
    with pytest.raises(UserError, match="was edited after `dmlbench evaluate` wrote it"):
        official_records("digits", root=tmp_path)
    del entry["evaluations"][0]["result"]["sha256"]
    path.write_bytes(gzip.compress(json.dumps(entry).encode()))
    with pytest.raises(UserError, match="does not match its per-query successes"):
        official_records("digits", root=tmp_path)
    # so is a result of other weights than the recipe's
    with pytest.raises(UserError, match="recipe's are"):
        write_entry(tmp_path / "x.json.gz", model="x", recipe_train=cfg, weights_sha256=SHA, budget="cpu",
                    evaluations=[result], created="2026-12-06")
    assert not (tmp_path / "x.json.gz").exists()
    with pytest.raises(UserError, match="damaged training log"):  # a log that is not one record per epoch
        write_entry(tmp_path / "x.json.gz", model="x", recipe_train=cfg, weights_sha256=sha, budget="cpu",
                    evaluations=[result], created="2026-12-06", history=[{"loss": 0.1}])
    assert not (tmp_path / "x.json.gz").exists()
