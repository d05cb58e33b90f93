"""Every code block of the README and the docs runs, so none can rot.

A ``python`` block runs with the blocks before it in the same page (one script per page, in a fresh folder); a
``bash`` block runs its commands one by one, ``dmlbench`` as the installed command would. Long work runs on tiny
settings: :data:`TINY` names each replacement, and a replacement that no longer matches anything fails the test, so
the table follows the pages. A block that cannot run here says why, in an HTML comment just above it
(``<!-- no-run: REASON -->``, invisible on the rendered page); the install commands are run by CI's fresh-clone job
and the test command is this suite, so those two are left to them. Untagged blocks are text (layouts, diagrams).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?:<!-- no-run: (?P<why>[^>]+?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)^```", re.S | re.M)
#: (page, text, replacement): the tiny settings long blocks run with
TINY = [
    ("api.md", 'TrainConfig(defense="ca_tride", dataset="digits", seed=0)',
     'TrainConfig(defense="ca_tride", dataset="digits", seed=0, epochs=1, train_subset=200)'),
    ("api.md", 'EvalConfig("rob28")', 'EvalConfig("rob28", max_queries=4)'),
    ("api.md", "max_queries=200", "max_queries=4"),
    # GTT: broken by the first APGD run, so pruning spares the 5,000-query search (minutes on a loaded machine)
    ("api.md", 'EvalConfig("rankaa28")', 'EvalConfig("rankaa28", max_queries=4, attacks=["GTT"])'),
    ("api.md", '["parts"]["QA-"]["QA-"]', '["parts"]["GTT"]["GTT"]'),
    ("api.md", 'n_queries=64', 'n_queries=4'),
    ("README.md", 'TrainConfig(defense="vanilla", dataset="digits", epochs=1, seed=0)',
     'TrainConfig(defense="vanilla", dataset="digits", epochs=1, seed=0, train_subset=200)'),
    ("README.md", "max_queries=32", "max_queries=4"),
    ("api.md", "store.add_record(record)", "store.add_record(record, allow_ineligible=True)"),  # 8 queries: partial
    ("README.md", "dmlbench run --defense ca_tride --dataset digits",
     "dmlbench run --defense ca_tride --dataset digits --epochs 1 --train-subset 200 --max-queries 4"),
    ("leaderboards.md", "--threads 1 --seed 0 --out RUN", "--threads 1 --epochs 1 --train-subset 200 --seed 0 --out RUN"),
    ("leaderboards.md", "--suite rob28 --eval-seed 0", "--suite rob28 --max-queries 4 --attacks GTT --eval-seed 0"),
]
#: commands left to others: the install (CI's fresh-clone job runs it) and the test command (this suite)
ELSEWHERE = ("python3 -m venv ", ". .venv/bin/activate", "pip install ", "python -m pytest")


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, body, no-run reason) of every fenced block of ``page``."""
    return [(m["lang"], m["body"], m["why"]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def tiny(page: Path, text: str, used: set[int]) -> str:
    for i, (name, old, new) in enumerate(TINY):
        if name == page.name and old in text:
            text = text.replace(old, new)
            used.add(i)
    return text


def commands(body: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments dropped, ``&&`` chains split."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out += [c.strip() for c in line.split(" && ")]
    return out


def test_every_runnable_looking_block_is_run_or_says_why_not():
    for page in PAGES:
        for lang, body, why in blocks(page):
            if lang in ("python", "bash"):
                continue
            assert lang in ("", "toml"), f"{page.name}: a ```{lang} block; use python, bash, toml or untagged text"
            assert not re.search(r"^\s*(dmlbench|python|import|from) ", body, re.M), \
                f"{page.name}: an untagged block holds code; tag it python or bash"
            assert why is None


def _run(argv: list[str], cwd: Path, what: str) -> None:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{what} failed:\n{out.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(lang in ("python", "bash") and not why
                                                          for lang, _, why in blocks(p))], ids=lambda p: p.name)
def test_the_code_blocks_of_a_page_run(page, tmp_path):
    used: set[int] = set()
    found = blocks(page)
    script = "\n".join(tiny(page, body, used) for lang, body, why in found if lang == "python" and not why)
    future = "from __future__ import annotations\n"
    if future in script:  # allowed once, first: the page's modules run as one script
        script = future + script.replace(future, "")
    if script.strip():
        _run([sys.executable, "-c", script], tmp_path, f"{page.name}'s python blocks")
    done: set[str] = set()
    for lang, body, why in found:
        if lang != "bash" or why:
            continue
        for cmd in commands(tiny(page, body, used)):
            if cmd.startswith(ELSEWHERE) or cmd in done:
                continue
            done.add(cmd)
            argv = shlex.split(cmd)
            assert argv[0] == "dmlbench", f"{page.name}: cannot run {cmd!r} here; mark the block no-run"
            quiet = ["--quiet"] if argv[1] in ("run", "train", "evaluate") else []
            _run([sys.executable, "-m", "robustbench_dml.cli.main", *argv[1:], *quiet], tmp_path, f"{page.name}: {cmd}")
    unused = [old for i, (name, old, _) in enumerate(TINY) if name == page.name and i not in used]
    assert not unused, f"tiny settings that no longer match {page.name}: {unused}"
