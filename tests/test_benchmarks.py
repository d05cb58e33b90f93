"""The attack-cost benchmark's scaling part runs end to end at toy sizes, so it cannot rot between the runs whose
output is committed under benchmarks/results/."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attacks.py"


def test_scaling_runs_each_size_in_its_own_process_and_reports_memory():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--skip-overhead", "--sizes", "300,900", "--scaling-steps",
                           "1", "--dim", "8", "--batch", "16", "--threads", "1", "--clock", "cpu"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ")}
    for aid in ("CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"):
        assert len(rows[f"{aid} s"]) == 2 and all(float(v) >= 0 for v in rows[f"{aid} s"])
    assert rows["suite s per item / smallest"][0] == "1.00"
    # a 900 x 8 gallery is 900 * 8 * 4 bytes; peak RSS of a process is never below what it had before the gallery
    assert rows["gallery embeddings MB"] == ["0", "0"]
    base, peak = (list(map(float, rows[k])) for k in ("peak RSS before the gallery MB", "peak RSS MB"))
    assert all(p >= b > 0 for p, b in zip(peak, base))
