"""Attack-suite cost, as ratios measured in one run (no absolute timings are asserted anywhere).

1. Overhead: one batch of the suite (9 attacks, ``steps`` PGD iterations each) against a gallery of ``--n``
   random normalised embeddings (the batch's own embeddings replace the first rows, so self is real), divided
   by its lower bound ``9 x steps x t_fb`` where ``t_fb`` is the measured forward + input-backward time of the
   model on that batch (``steps`` passes timed right before each attack, so both see the same machine load). Everything beyond the lower bound
   (selections, clean/adversarial measurements, gallery-side distance passes, sorting) is overhead.
2. Scaling: per-batch time of each attack for gallery sizes 10^4, 10^5, 10^6 with a tiny model (one linear
   layer), so gallery-side work dominates.

Usage: ``python benchmarks/bench_attacks.py [--model c2f2] [--batch 128] [--steps 32] [--n 10000]
[--sizes 10000,100000,1000000] [--scaling-steps 32] [--threads N]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import attacks
from attacks.suites import ROB28
from robustbench_dml.gallery import Gallery


BACKEND = "torch"  # --knn-backend
CLOCK = time.perf_counter  # --clock cpu switches to process CPU time (steadier on a shared machine)


def fwd_bwd_times(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    times = []
    model.eval()
    for _ in range(repeats):
        xi = x.clone().requires_grad_(True)
        t = CLOCK()
        z = F.normalize(model(xi), dim=1)
        (g,) = torch.autograd.grad(z.sum(), xi)
        times.append(CLOCK() - t)
    return times


def random_gallery(model: nn.Module, x: torch.Tensor, n: int, seed: int = 0) -> Gallery:
    with torch.no_grad():
        own = F.normalize(model.eval()(x), dim=1)
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, own.shape[1], generator=g), dim=1)
    emb[: own.shape[0]] = own
    labels = torch.randint(10, (n,), generator=g)
    return Gallery(emb, labels, backend=BACKEND)


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
    fwd_bwd_times(model, x, 2)  # warm-up
    per_attack, bounds = {}, {}
    for entry in ROB28.attacks:
        # the bound of this attack: `steps` forward+backward passes timed right before it (same machine load)
        bounds[entry.id] = sum(fwd_bwd_times(model, x, steps))
        per_attack[entry.id] = _run(entry.id, model, x, y, gallery, eps=ROB28.eps, alpha=ROB28.alpha, steps=steps,
                                    params=entry.kwargs())
    total, bound = sum(per_attack.values()), sum(bounds.values())
    print(f"# overhead: model {model_name}, batch {batch}, steps {steps}, gallery {n} x 512, "
          f"threads {torch.get_num_threads()}, clock {CLOCK.__name__}, knn backend {BACKEND}")
    print(f"forward+backward of one batch: mean {bound / (steps * len(bounds)) * 1e3:.1f} ms")
    for aid, t in per_attack.items():
        print(f"  {aid:4s} {t:8.2f} s   bound {bounds[aid]:8.2f} s   ratio {t / bounds[aid]:.3f}")
    print(f"suite: {total:.2f} s, lower bound {bound:.2f} s, ratio {total / bound:.3f} "
          f"(overhead {100 * (total / bound - 1):.1f}%)")


def scaling(sizes: list[int], batch: int, steps: int, dim: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, dim))
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(10, (batch,))
    print(f"# scaling: tiny model Linear(784, {dim}), batch {batch}, steps {steps}; seconds per batch")
    rows: dict[str, list[float]] = {e.id: [] for e in ROB28.attacks}
    for n in sizes:
        gallery = random_gallery(model, x, n)
        for entry in ROB28.attacks:
            rows[entry.id].append(_run(entry.id, model, x, y, gallery, eps=ROB28.eps, alpha=ROB28.alpha,
                                       steps=steps, params=entry.kwargs()))
            print(f"  n={n} {entry.id}: {rows[entry.id][-1]:.2f} s", flush=True)
        del gallery
    print("attack  " + "".join(f"{n:>12d}" for n in sizes))
    for aid, ts in rows.items():
        print(f"{aid:6s}  " + "".join(f"{t:12.2f}" for t in ts))
    totals = [sum(r[i] for r in rows.values()) for i in range(len(sizes))]
    print("suite   " + "".join(f"{t:12.2f}" for t in totals))


def main() -> None:
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
    args = p.parse_args()
    if args.threads:
        from robustbench_dml.runtime import set_threads

        set_threads(args.threads)
    global CLOCK, BACKEND
    BACKEND = args.knn_backend
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if not args.skip_overhead:
        overhead(args.model, args.batch, args.steps, args.n)
    if not args.skip_scaling:
        scaling([int(s) for s in args.sizes.split(",")], args.batch, args.scaling_steps, args.dim)


if __name__ == "__main__":
    main()
