"""The device check script runs end to end on the CPU (its --dry-run), so it is ready when a GPU machine is lent."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.mark.slow
def test_the_device_check_dry_run_measures_and_compares_every_part(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for part in ("train: vanilla on digits", "rob28: 8 queries on cpu", "bound (PGD iterations", "compare: ",
                 "knn: 10,000 x 128 gallery", "rob224: one GTT batch"):
        assert part in out, part
    # on one CPU the script compares a run with itself: every per-query result must agree exactly
    compared = [line for line in out.splitlines() if line.startswith("  ") and "identical" in line]
    assert len(compared) == 6 and all("identical 100.0%" in line and "max |diff| 0 " in line for line in compared)
    assert "neighbours identical to the CPU's on 128 queries: True" in out
