"""Where a whole ``dmlbench evaluate`` process spends its time, against the attacks' own lower bound.

Each measurement is a fresh process, as a user runs it, on one Fashion-MNIST checkpoint (default: the official
board's vanilla seed 0, ``benchmarks/official_boards.py``; any 28x28 checkpoint will do):

1. ``dmlbench evaluate --max-queries N`` for each N of ``--queries`` (default 256 and 2,560): the process's wall
   time, split into start-up and imports (what the process spent before the evaluation began, read off the gap),
   the plan's probe (its own line), and the evaluation's phases as the result records them (``extra.timing.phases``:
   loading the checkpoint and data, embedding, benign metrics, the bound's two measurements, the attacks, scoring),
   the rest being writing and reporting. The whole process is then given as a multiple of the attacks' lower bound
   (the sum over attacks of PGD iterations x the fastest forward+backward; issue target: at most 1.25 at 256).
2. ``dmlbench evaluate --benign-only`` against the plain reference pipeline in its own process: load the checkpoint
   and the test split, embed it (batch 128, no grad), one faiss exact search of (largest class + 1) neighbours,
   R@1 and MAP@R from those lists (target: at most 1.5x).

Timings are noisy on a shared machine: the script prints the load average beside them; compare ratios from one run.

    python benchmarks/bench_evaluate.py [--checkpoint DIR] [--queries 256,2560] [--output REPORT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CHECKPOINT = ROOT / "runs/official/fashion/vanilla/seed0/checkpoint"
DATA = ROOT.parent / "shared/data/fashion-mnist"

REFERENCE = r"""
import sys, time
import numpy as np, torch, faiss
from robustbench_dml import datasets
from robustbench_dml.checkpoint import load_checkpoint
if sys.argv[3]:
    torch.set_num_threads(int(sys.argv[3]))
model, meta = load_checkpoint(sys.argv[1])
test = datasets.create(meta["dataset"], root=sys.argv[2], split="test")
loader = torch.utils.data.DataLoader(test, batch_size=128)
model.eval()
with torch.no_grad():
    emb = torch.cat([torch.nn.functional.normalize(model(x), dim=1) for x, _ in loader]).numpy()
labels = np.asarray([int(y) for _, y in test])
k = int(np.bincount(labels).max()) + 1
index = faiss.IndexFlatL2(emb.shape[1]); index.add(emb)
_, idx = index.search(emb, k)
idx = idx[:, 1:]                                       # the query itself first (its distance is 0)
rel = labels[idx] == labels[:, None]
r = np.bincount(labels)[labels] - 1
r1 = rel[:, 0].mean() * 100
prec = np.cumsum(rel, 1) / np.arange(1, k) * rel
map_r = np.mean([prec[i, :r[i]].sum() / r[i] for i in range(len(r))]) * 100
print(f"R@1 {r1:.2f} MAP@R {map_r:.2f}")
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout


def evaluate(checkpoint: Path, queries: int, folder: Path) -> dict:
    """One whole process; its breakdown in seconds."""
    result = folder / f"q{queries}.json"
    wall, stdout = timed([sys.executable, "-m", "robustbench_dml.cli.main", "evaluate", "--checkpoint", str(checkpoint),
                          "--data-root", str(DATA), "--max-queries", str(queries), "--json", str(result),
                          "--no-progress", "--device", "cpu"])
    timing = json.loads(result.read_text())["extra"]["timing"]
    probe = re.search(r"the probe took ([0-9.]+) s", stdout)
    phases = {("bound measurements" if k == "bound" else k): v for k, v in timing["phases"].items()}
    bound = sum(t["bound_s"] or 0.0 for t in timing["attacks"].values())
    probe_s = float(probe.group(1)) if probe else 0.0
    rest = wall - sum(phases.values()) - probe_s
    return {"queries": queries, "wall": wall, "probe": probe_s, **phases, "start-up, imports, writing": rest,
            "bound": bound, "whole / bound": wall / bound if bound else float("nan"),
            "attacks / bound": phases.get("attacks", 0.0) / bound if bound else float("nan"),
            "suspect": timing.get("suspect", [])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--queries", default="256,2560", help="comma-separated; an empty string measures the benign phase "
                                                           "alone")
    p.add_argument("--threads", default="", help="torch threads in the reference pipeline (default: torch's, as "
                                                 "dmlbench)")
    p.add_argument("--output", help="also write the Markdown report here")
    args = p.parse_args()
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "meta.json").is_file():
        sys.exit(f"bench_evaluate: {checkpoint} is not a checkpoint; train one with benchmarks/official_boards.py "
                 "--sets fashion --models vanilla --seeds 0 --suites rob28, or pass --checkpoint")
    lines = [f"# Whole-process evaluation time (`benchmarks/bench_evaluate.py`)", "",
             f"Checkpoint `{checkpoint}`, Fashion-MNIST, CPU; load average before: "
             f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [evaluate(checkpoint, int(q), Path(tmp)) for q in args.queries.split(",") if q]  # "": benign only
        benign, _ = timed([sys.executable, "-m", "robustbench_dml.cli.main", "evaluate", "--checkpoint",
                           str(checkpoint), "--data-root", str(DATA), "--benign-only", "--json",
                           str(Path(tmp) / "benign.json"), "--device", "cpu", "--quiet"])
        reference, ref_out = timed([sys.executable, "-c", REFERENCE, str(checkpoint), str(DATA), args.threads])
    keys = ["wall", "start-up, imports, writing", "probe", "load", "embed", "benign", "bound measurements", "attacks",
            "scores"]
    lines += ["| queries | " + " | ".join(keys) + " | attack bound | whole / bound | attacks / bound | suspect |",
              "|---|" + "---|" * (len(keys) + 4)]
    for r in rows:
        lines.append(f"| {r['queries']} | " + " | ".join(f"{r.get(k, 0.0):.1f}" for k in keys) +
                     f" | {r['bound']:.1f} | {r['whole / bound']:.2f} | {r['attacks / bound']:.2f} | "
                     f"{', '.join(r['suspect']) or '-'} |")
    lines += ["", f"`dmlbench evaluate --benign-only`: {benign:.1f} s; reference pipeline (embed + one faiss search "
              f"of the largest class + 1 neighbours + R@1 and MAP@R; {ref_out.strip()}): {reference:.1f} s; ratio "
              f"{benign / reference:.2f}.", "",
              f"Load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
