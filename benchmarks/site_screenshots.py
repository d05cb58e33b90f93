"""Look at the leaderboard site in a real browser: the index, a board and a model page rendered by headless Chromium
(Debian's ``chromium`` package) into PNGs.

    python benchmarks/site_screenshots.py --site DIR [--board KEY] [--model RECORD_ID] [--board-height PX]
        [--out benchmarks/results/site]

``DIR`` is a folder written by ``dmlbench leaderboard site --output DIR``; the board defaults to the first listed
in the index with measured rows, the model to the first row of that board.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shoot(page: Path, png: Path, width: int, height: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: install Debian's chromium package (apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    print(png)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--site", required=True)
    p.add_argument("--board")
    p.add_argument("--model")
    p.add_argument("--out", default=str(HERE / "results" / "site"))
    p.add_argument("--width", type=int, default=1920)  # a common desktop screen
    p.add_argument("--board-height", type=int, default=900, help="tall enough for every row of the board to show")
    args = p.parse_args()
    site, out = Path(args.site), Path(args.out)
    index = (site / "index.html").read_text(encoding="utf-8")
    boards = re.findall(r'href="boards/([^"]+)\.html"', index)
    board = args.board or next(b for b in boards if not b.endswith("papers-robrank"))
    page = (site / "boards" / f"{board}.html").read_text(encoding="utf-8")
    model = args.model or re.findall(r'href="\.\./models/([^"]+)\.html"', page)[0]
    shoot(site / "index.html", out / "index.png", args.width, 700)
    shoot(site / "boards" / f"{board}.html", out / "board.png", args.width, args.board_height)
    shoot(site / "models" / f"{model}.html", out / "model.png", 1000, 1300)


if __name__ == "__main__":
    main()
