"""The strong suite's cost as a ratio to the published one, measured in one run (``docs/protocol.md``, The strong
suites): per attack, one batch of queries attacked by the rob28 attack and by the same attack under rankaa28's
engine (same model, gallery, targets and machine load; the two calls alternate), and the suite's total.

The model is the 28x28 preset's c2f2 (seeded random weights: the cost does not depend on the weights) and the
gallery ``--n`` random normalised embeddings with the batch's own embeddings as its first rows
(:func:`bench_attacks.random_gallery`). Writes a markdown table to ``--report``.

    python benchmarks/bench_rankaa.py [--batch 128] [--n 10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_attacks import random_gallery

import attacks
from attacks.suites import RANKAA28, ROB28
from robustbench_dml import backbones


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--load", default="nothing else noted", help="what else ran on the machine, for the report")
    p.add_argument("--report", default=str(Path(__file__).parent / "results" / "bench_rankaa.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = backbones.create("c2f2", embedding_dim=128, in_channels=1).eval()
    x = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(10, (args.batch,), generator=torch.Generator().manual_seed(2))
    gallery = random_gallery(model, x, args.n)
    gallery.labels[: args.batch] = labels
    rows, totals = [], [0.0, 0.0]
    for entry in ROB28.attacks:
        times = []
        for engine in (None, RANKAA28.engine):
            atk = attacks.create(entry.id, model=model, eps=ROB28.eps, alpha=ROB28.alpha, steps=ROB28.steps,
                                 engine=engine, **entry.kwargs())
            t = time.perf_counter()
            atk(x, labels, gallery, generator=torch.Generator().manual_seed(3), query_index=torch.arange(args.batch))
            times.append(time.perf_counter() - t)
        totals[0] += times[0]
        totals[1] += times[1]
        rows.append(f"| {entry.id} | {times[0]:.1f} | {times[1]:.1f} | {times[1] / times[0]:.2f} |")
        print(rows[-1], flush=True)
    lines = ["# rankaa28 against rob28: cost on the same model, measured in one run", "",
             f"c2f2 (28x28), one batch of {args.batch} queries, gallery of {args.n} embeddings, "
             f"{torch.get_num_threads()} thread(s); wall seconds per attack call (rob28's attack, then the same attack "
             "under rankaa28's engine). Work count: rankaa28 runs "
             f"{RANKAA28.iterations:.1f} model passes per query and attack, rob28 {ROB28.iterations:.0f} "
             f"({RANKAA28.iterations / ROB28.iterations:.2f}x). Machine load: {args.load}.", "",
             "Regenerate: `python benchmarks/bench_rankaa.py`", "",
             "| attack | rob28 s | rankaa28 s | ratio |", "|---|---|---|---|", *rows,
             f"| suite | {totals[0]:.1f} | {totals[1]:.1f} | {totals[1] / totals[0]:.2f} |", ""]
    Path(args.report).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
