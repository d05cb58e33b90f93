"""The documentation ships: the docs/ site builds with no broken link, and nothing in the code, the help texts or
the README names a document that is not in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# files the benchmarks write at run time, named in their --help (not documents)
GENERATED = {"report.md", "defense_study_BUDGET.md"}


def _sources() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for package in ("robustbench_dml", "attacks", "defenses", "benchmarks"):
        files += sorted((REPO / package).rglob("*.py"))
    return files


def test_every_named_document_exists():
    missing = []
    for path in _sources():
        for name in set(re.findall(r"[\w./-]+\.md\b", path.read_text())):
            name = name.lstrip("./")
            if Path(name).name in GENERATED:
                continue
            candidates = [REPO / name, REPO / "docs" / name, path.parent / name, REPO / "benchmarks/results" / name]
            if not any(c.is_file() for c in candidates):
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not missing, missing


def test_help_texts_name_no_missing_document(capsys):
    from robustbench_dml.cli.main import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:
        texts += [sub.format_help() for sub in action.choices.values()]
    names = {n for t in texts for n in re.findall(r"[\w./-]+\.md\b", t)}
    assert all((REPO / n).is_file() for n in names), names


def test_the_docs_site_builds_without_a_broken_link(tmp_path):
    pytest.importorskip("mkdocs")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "site" / "leaderboards" / "index.html").is_file()
    # and a broken link does fail the build
    bad = tmp_path / "docs"
    bad.mkdir()
    (bad / "index.md").write_text("# x\n\nsee [nothing](missing.md)\n")
    (tmp_path / "mkdocs.yml").write_text((REPO / "mkdocs.yml").read_text().split("nav:")[0]
                                         .replace("docs_dir: docs", f"docs_dir: {bad}"))
    broken = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                             "-d", str(tmp_path / "site2")], capture_output=True, text=True, cwd=tmp_path)
    assert broken.returncode != 0 and "missing.md" in broken.stderr
