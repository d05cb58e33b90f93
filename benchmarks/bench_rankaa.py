"""The strong suites' cost as a ratio to the published one, measured in one run (``docs/protocol.md``, The strong
suites): per attack, one batch of queries attacked by the rob28 attack and by the same attack under each strong
suite's engine (same model, gallery, targets and machine load; the calls alternate), and the suites' totals.

The model is the 28x28 preset's c2f2 (seeded random weights: the cost does not depend on the weights) and the
gallery ``--n`` random normalised embeddings with the batch's own embeddings as its first rows
(:func:`bench_attacks.random_gallery`). Writes a markdown table to ``--report``.

    python benchmarks/bench_rankaa.py [--suites rankaa28.v1,rankaa28] [--batch 128] [--n 10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_attacks import random_gallery

import attacks
from attacks.suites import ROB28, get_suite
from robustbench_dml import backbones


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--suites", default="rankaa28.v1,rankaa28",
                   help="the strong suites measured against rob28, each attack's calls alternating (rankaa28plus "
                        "costs about 80 times rob28: hours on one CPU core)")
    p.add_argument("--load", default="nothing else noted", help="what else ran on the machine, for the report")
    p.add_argument("--no-cub", action="store_true", help="skip timing one PGD iteration of CUB's model (ResNet-50, "
                                                         "112 images of 224x224: about a minute on 2 CPU cores)")
    p.add_argument("--report", default=str(Path(__file__).parent / "results" / "bench_rankaa.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = [get_suite(s) for s in args.suites.split(",")]
    names = [f"{s.id} v{s.version}" for s in suites]
    torch.manual_seed(0)
    model = backbones.create("c2f2", embedding_dim=128, in_channels=1).eval()
    x = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(10, (args.batch,), generator=torch.Generator().manual_seed(2))
    gallery = random_gallery(model, x, args.n)
    gallery.labels[: args.batch] = labels
    rows, totals = [], [0.0] * (1 + len(suites))
    for entry in ROB28.attacks:
        times = []
        for engine in (None, *(s.engine for s in suites)):
            atk = attacks.create(entry.id, model=model, eps=ROB28.eps, alpha=ROB28.alpha, steps=ROB28.steps,
                                 engine=engine, **entry.kwargs())
            t = time.perf_counter()
            atk(x, labels, gallery, generator=torch.Generator().manual_seed(3), query_index=torch.arange(args.batch))
            times.append(time.perf_counter() - t)
        totals = [a + b for a, b in zip(totals, times)]
        rows.append(f"| {entry.id} | " + " | ".join(f"{t:.1f}" for t in times) + " | "
                    + " | ".join(f"{t / times[0]:.2f}" for t in times[1:]) + " |")
        print(rows[-1], flush=True)
    work = "; ".join(f"{n} {s.iterations:.1f} ({s.iterations / ROB28.iterations:.2f}x)" for n, s in zip(names, suites))
    lines = ["# The strong suites against rob28: cost on the same model, measured in one run", "",
             f"c2f2 (28x28), one batch of {args.batch} queries, gallery of {args.n} embeddings, "
             f"{torch.get_num_threads()} thread(s); wall seconds per attack call (rob28's attack, then the same attack "
             "under each strong suite's engine), and each strong suite's time as a multiple of rob28's. Work count "
             f"(model passes per query and attack, before pruning): rob28 {ROB28.iterations:.0f}; {work}. The weights "
             "are random, so the attacks break queries at other rates than on a trained model, and pruning (which "
             f"spares the runs after the first on queries at the floor) saves what it saves here. Machine load: "
             f"{args.load}.", "",
             f"Regenerate: `python benchmarks/bench_rankaa.py --suites {args.suites}`", "",
             "| attack | rob28 s | " + " | ".join(f"{n} s" for n in names) + " | "
             + " | ".join(f"{n} / rob28" for n in names) + " |",
             "|---|---|" + "---|" * (2 * len(suites)), *rows,
             "| suite | " + " | ".join(f"{t:.1f}" for t in totals) + " | "
             + " | ".join(f"{t / totals[0]:.2f}" for t in totals[1:]) + " |", ""]
    lines += whole_evaluations(suites, totals, args.no_cub)
    Path(args.report).write_text("\n".join(lines))
    print("\n".join(lines))


def whole_evaluations(suites, totals: list[float], no_cub: bool) -> list[str]:
    """What whole evaluations would take, priced as ``dmlbench``'s plan prices them (iterations x seconds per
    iteration), each strong suite by its cost measured against rob28 above: Fashion-MNIST (10,000 queries, c2f2,
    the iteration time of rob28 in this run) and CUB-200-2011 (5,924 queries, ResNet-50 at 224x224, one iteration
    timed here)."""
    from attacks.pgd import iteration_seconds
    from robustbench_dml.evaluation import EvalConfig
    from robustbench_dml.plan import clock

    def iterations(suite_id: str, queries: int) -> int:
        config = EvalConfig(suite_id)
        batches = -(-queries // config.suite_obj.batch_size)
        return round(sum(config.runs(a) * batches * config.suite_obj.iterations for a in config.attack_ids))

    per_it = totals[0] / (len(ROB28.attacks) * ROB28.iterations)  # one batch of 128, rob28's own calls
    sets = [("Fashion-MNIST, 10,000 queries", "rob28", 10000, per_it, "")]
    if not no_cub:
        model = backbones.create("resnet50", embedding_dim=512, pretrained=False).eval()
        x = torch.rand(112, 3, 224, 224, generator=torch.Generator().manual_seed(4))
        cub = min(iteration_seconds(model, x, repeats=1))
        sets.append(("CUB-200-2011, 5,924 queries", "rob224", 5924, cub, f" ({cub:.1f} s per iteration timed here)"))
    out = ["", "## Whole evaluations on this CPU, priced as the plan prices them", "",
           "Iterations (forward+backward of a query batch; GTM and LTM run once per protocol under rob28/rob224) times "
           "seconds per iteration, each strong suite scaled by its cost against rob28 measured above (which counts "
           "what the work count leaves out: the measurement at every APGD iterate, the checks). One GPU: not "
           "measured; no session has had a GPU machine, and `--plan` on one prices it there.", "",
           "| data | " + " | ".join(["rob28 / rob224", *(f"{s.id} v{s.version}" for s in suites)]) + " |",
           "|---|" + "---|" * (1 + len(suites))]
    for name, base, queries, seconds, note in sets:
        published = iterations(base, queries) * seconds
        cells = [clock(published)] + [clock(published * t / totals[0]) for t in totals[1:]]
        out.append(f"| {name}{note} | " + " | ".join(cells) + " |")
    return out + [""]


if __name__ == "__main__":
    main()
