"""The plugin page's example packages, installed and used exactly as ``docs/plugins.md`` shows; the page's contracts
are the base classes' docstrings and its code is the examples' files."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from defenses.base import Defense
from robustbench_dml.backbones import EmbeddingNet

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plugins.md"
EXAMPLES = ROOT / "examples"


def contract(obj) -> str:
    """The contract part of a base class's docstring as Markdown (roles and double backticks made plain)."""
    text = "The contract a " + inspect.getdoc(obj).split("The contract a ", 1)[1]
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: "`" + m.group(1).split(".")[-1] + "`", text)
    return text.replace("``", "`").strip()


def test_the_page_shows_the_example_files_and_states_the_docstrings_contracts():
    page = PAGE.read_text(encoding="utf-8")
    for obj in (Defense, EmbeddingNet):
        assert contract(obj) in page, f"docs/plugins.md does not state {obj.__name__}'s docstring contract"
    shown = re.findall(r"^`(examples/[^`]+)`:\n\n```\w+\n(.*?)^```", page, re.S | re.M)
    files = sorted(str(p.relative_to(ROOT)) for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix in (".py", ".toml"))
    assert sorted(name for name, _ in shown) == files
    for name, body in shown:
        assert body == (ROOT / name).read_text(encoding="utf-8"), f"docs/plugins.md shows another {name}"


def _install(package: str, target: Path) -> dict[str, str]:
    """``pip install`` of an example package (a copy, so the build leaves nothing in the repository) into
    ``target`` (no dependencies: robustbench-dml is here already); the environment that puts it on the import
    path, as an installed package is."""
    import shutil

    source = shutil.copytree(EXAMPLES / package, target.parent / "src" / package)
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return {**os.environ, "PYTHONPATH": str(target)}


def _dmlbench(env, cwd, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_dml.cli.main", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


TINY = ("--train-subset", "200", "--max-queries", "4", "--attacks", "GTT", "--threads", "1", "--quiet")


@pytest.mark.slow
def test_the_defense_plugin_installs_lists_and_trains(tmp_path):
    env = _install("dmlbench-noise-defense", tmp_path / "site")
    listed = _dmlbench(env, tmp_path, "list", "defenses")
    assert listed.returncode == 0 and "noise" in listed.stdout.split()
    run = _dmlbench(env, tmp_path, "run", "--defense", "noise", "--dataset", "digits", "--epochs", "1",
                    "--set", "eps=0.2", "--out", "run", *TINY)
    assert run.returncode == 0, run.stderr
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["defense"] == "noise" and meta["defense_config"]["eps"] == 0.2
    assert "noise" not in _dmlbench(dict(os.environ), tmp_path, "list", "defenses").stdout.split()  # not installed


@pytest.mark.slow
def test_the_backbone_plugin_installs_lists_trains_and_evaluates(tmp_path):
    env = _install("dmlbench-mlp-backbone", tmp_path / "site")
    listed = _dmlbench(env, tmp_path, "list", "backbones")
    assert listed.returncode == 0 and "mlp28" in listed.stdout.split()
    run = _dmlbench(env, tmp_path, "run", "--backbone", "mlp28", "--dataset", "digits", "--epochs", "1", "--out",
                    "run", *TINY)
    assert run.returncode == 0, run.stderr
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["backbone"] == "mlp28" and meta["embedding_dim"] == 512
    # the checkpoint evaluates again wherever the plugin is installed, and says what is missing where it is not
    again = _dmlbench(env, tmp_path, "evaluate", "--checkpoint", "run/checkpoint", "--benign-only", "--json", "b.json")
    assert again.returncode == 0, again.stderr
    missing = _dmlbench(dict(os.environ), tmp_path, "evaluate", "--checkpoint", "run/checkpoint", "--benign-only")
    assert missing.returncode == 2 and "unknown backbone 'mlp28'" in missing.stderr
