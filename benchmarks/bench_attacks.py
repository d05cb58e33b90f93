"""Attack-suite cost, as ratios measured in one run (no absolute timings are asserted anywhere).

1. Overhead: one batch of the suite (9 attacks, ``steps`` PGD iterations each) against a gallery of ``--n``
   random normalised embeddings (the batch's own embeddings replace the first rows, so self is real), divided
   by its lower bound ``9 x steps x t_fb`` where ``t_fb`` is the measured forward + input-backward time of the
   model on that batch (``steps`` passes timed right before each attack, so both see the same machine load).
   Everything beyond the bound (selections, clean/adversarial measurements, gallery-side passes, sorting) is
   overhead. The floor adds what no implementation avoids: the per-step products of the batch with the whole
   gallery that QA, GTT (distances and the gradient's weighted sum) and LTM (distances) need
   (``GALLERY_PRODUCTS``); the ratio to the floor is what the fused passes leave.
2. Scaling: each gallery size (10^4, 10^5, 10^6 by default) in its own process: a tiny model (one linear layer,
   so gallery-side work dominates) embeds a synthetic dataset of that size through the evaluation's
   :func:`robustbench_dml.gallery.embed`, then attacks one batch with every rob28 attack; prints seconds per
   attack, the suite's time per gallery item relative to the smallest size (1.00 = linear) and peak RSS.

Usage: ``python benchmarks/bench_attacks.py [--model c2f2] [--batch 128] [--steps 32] [--n 10000]
[--sizes 10000,100000,1000000] [--scaling-steps 32] [--dim 64] [--threads N] [--clock cpu]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import attacks
from attacks.pgd import iteration_seconds
from attacks.suites import ROB28
from robustbench_dml.gallery import Gallery

BACKEND = "torch"  # --knn-backend
CLOCK = time.perf_counter  # --clock cpu switches to process CPU time (steadier on a shared machine)


def random_gallery(model: nn.Module, x: torch.Tensor, n: int, seed: int = 0) -> Gallery:
    with torch.no_grad():
        own = F.normalize(model.eval()(x), dim=1)
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, own.shape[1], generator=g), dim=1)
    emb[: own.shape[0]] = own
    labels = torch.randint(10, (n,), generator=g)
    return Gallery(emb, labels, backend=BACKEND)


# per PGD step, the products of the whole (N, D) gallery with the (B, D) batch that an attack's loss cannot avoid:
# the distances to every item (QA, GTT, LTM) and, for the hinge over every item, the gradient's weighted sum of
# the items (QA, GTT); the other attacks' losses read fixed data prepared once
GALLERY_PRODUCTS = {"QA+": 2, "QA-": 2, "GTT": 2, "LTM": 1}


def gallery_product_time(gallery: Gallery, z: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of one (B, D) x (D, N) product with the gallery (the floor of a per-step gallery pass)."""
    times = []
    for _ in range(repeats):
        t = CLOCK()
        z @ gallery.embeddings.T
        times.append(CLOCK() - t)
    return sorted(times)[len(times) // 2]


def _run(aid: str, model, x, y, gallery, *, eps, alpha, steps, params) -> float:
    atk = attacks.create(aid, model=model, eps=eps, alpha=alpha, steps=steps, **params)
    t = CLOCK()
    atk(x, y, gallery, generator=torch.Generator().manual_seed(0), query_index=torch.arange(x.shape[0]))
    return CLOCK() - t


def overhead(model_name: str, batch: int, steps: int, n: int) -> None:
    from robustbench_dml import backbones

    torch.manual_seed(0)
    model = backbones.create(model_name, embedding_dim=512)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(10, (batch,))
    gallery = random_gallery(model, x, n)
    z = gallery.embeddings[:batch].clone()
    per_attack, bounds, floors = {}, {}, {}
    for entry in ROB28.attacks:
        # the bound of this attack: `steps` forward+backward passes timed right before it (same machine load);
        # its floor adds the gallery products its loss needs per step
        bounds[entry.id] = sum(iteration_seconds(model, x, repeats=steps, clock=CLOCK))
        floors[entry.id] = bounds[entry.id] + steps * GALLERY_PRODUCTS.get(entry.id, 0) * gallery_product_time(gallery, z)
        per_attack[entry.id] = _run(entry.id, model, x, y, gallery, eps=ROB28.eps, alpha=ROB28.alpha, steps=steps,
                                    params=entry.kwargs())
    total, bound, floor = sum(per_attack.values()), sum(bounds.values()), sum(floors.values())
    print(f"# overhead: model {model_name}, batch {batch}, steps {steps}, gallery {n} x 512, "
          f"threads {torch.get_num_threads()}, clock {CLOCK.__name__}, knn backend {BACKEND}")
    print(f"forward+backward of one batch: mean {bound / (steps * len(bounds)) * 1e3:.1f} ms; one gallery product "
          f"{gallery_product_time(gallery, z) * 1e3:.1f} ms")
    print("| attack | seconds | bound (model) | ratio | floor (model + gallery products) | ratio to floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for aid, t in per_attack.items():
        print(f"| {aid} | {t:.2f} | {bounds[aid]:.2f} | {t / bounds[aid]:.3f} | {floors[aid]:.2f} | "
              f"{t / floors[aid]:.3f} |")
    print(f"| suite | {total:.2f} | {bound:.2f} | {total / bound:.3f} | {floor:.2f} | {total / floor:.3f} |")


class SyntheticImages:
    """``n`` items (1 x 28 x 28 image in [0, 1], label in 0..9), each drawn from its own seeded generator: a
    dataset of any size that takes no memory until it is embedded."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.rand(1, 28, 28, generator=g), i % 10


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling_one(n: int, batch: int, steps: int, dim: int) -> dict:
    """One gallery size in this process: the evaluation's path (embed a dataset of ``n`` items into a gallery,
    then every rob28 attack on the first ``batch`` items) with a tiny model, so gallery-side work dominates.
    Returns seconds per attack, the embedding time, and peak RSS before and after the gallery exists."""
    from robustbench_dml.gallery import embed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, dim))
    data = SyntheticImages(n)
    x = torch.stack([data[i][0] for i in range(batch)])
    y = torch.tensor([data[i][1] for i in range(batch)])
    base = peak_rss_mb()
    t = CLOCK()
    gallery = embed(model, data, batch_size=1024, backend=BACKEND)
    embed_s = CLOCK() - t
    times = {e.id: _run(e.id, model, x, y, gallery, eps=ROB28.eps, alpha=ROB28.alpha, steps=steps,
                        params=e.kwargs()) for e in ROB28.attacks}
    return {"n": n, "times": times, "embed_s": embed_s, "rss_base_mb": base, "rss_peak_mb": peak_rss_mb(),
            "gallery_mb": gallery.embeddings.numel() * 4 / 2**20}


def scaling(sizes: list[int], batch: int, steps: int, dim: int, threads: int | None) -> None:
    """Each size in a fresh process (peak RSS is per process), then one table: seconds per batch per attack, the
    suite's seconds per 10^4 gallery items relative to the smallest size (1.00 = linear), and memory."""
    import json
    import subprocess
    import sys

    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--scaling-one", str(n), "--batch", str(batch), "--scaling-steps",
               str(steps), "--dim", str(dim), "--clock", "cpu" if CLOCK is time.process_time else "wall",
               "--knn-backend", BACKEND] + (["--threads", str(threads)] if threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  n={n}: suite {sum(rows[-1]['times'].values()):.2f} s, peak RSS {rows[-1]['rss_peak_mb']:.0f} MB",
              flush=True)
    print(f"# scaling: tiny model Linear(784, {dim}), batch {batch}, steps {steps}, threads {threads or 'default'}, "
          f"clock {CLOCK.__name__}; each size in its own process")
    print("| | " + " | ".join(f"n = {r['n']:,}" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for aid in rows[0]["times"]:
        print(f"| {aid} s | " + " | ".join(f"{r['times'][aid]:.2f}" for r in rows) + " |")
    suite = [sum(r["times"].values()) for r in rows]
    print("| suite s | " + " | ".join(f"{t:.2f}" for t in suite) + " |")
    unit = suite[0] / rows[0]["n"]
    print("| suite s per item / smallest | " + " | ".join(f"{t / r['n'] / unit:.2f}" for t, r in zip(suite, rows)) + " |")
    print("| embedding the gallery s | " + " | ".join(f"{r['embed_s']:.1f}" for r in rows) + " |")
    print("| gallery embeddings MB | " + " | ".join(f"{r['gallery_mb']:.0f}" for r in rows) + " |")
    print("| peak RSS before the gallery MB | " + " | ".join(f"{r['rss_base_mb']:.0f}" for r in rows) + " |")
    print("| peak RSS MB | " + " | ".join(f"{r['rss_peak_mb']:.0f}" for r in rows) + " |")


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="c2f2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--scaling-steps", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--knn-backend", choices=["torch", "faiss"], default="torch")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--scaling-one", type=int, default=None, help=argparse.SUPPRESS)  # one size, JSON (internal)
    args = p.parse_args()
    if args.threads:
        from robustbench_dml.runtime import set_threads

        set_threads(args.threads)
    global CLOCK, BACKEND
    BACKEND = args.knn_backend
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.scaling_one is not None:
        import json

        print(json.dumps(scaling_one(args.scaling_one, args.batch, args.scaling_steps, args.dim)))
        return
    if not args.skip_overhead:
        overhead(args.model, args.batch, args.steps, args.n)
    if not args.skip_scaling:
        scaling([int(s) for s in args.sizes.split(",")], args.batch, args.scaling_steps, args.dim, args.threads)


if __name__ == "__main__":
    main()
