"""Time and peak memory of ``retrieval_metrics`` at growing N (each size in a fresh subprocess).

Data: random clustered unit vectors (dimension ``--dim``, default 128), classes of exactly ``--class-size``
items (default 100, so K = 99 neighbours), centres N(0, I), noise sd ``--spread`` per coordinate.
For sizes above ``--full-up-to`` only a seeded subset of ``--queries`` queries is scored against the whole
gallery (``max_queries``); per-query cost is independent of the other queries, so the full-query time is
extrapolated linearly and printed as such. NMI (k-means with k = N / class-size clusters, O(N^2 / class-size)
work) is timed separately and skipped above ``--nmi-up-to``.

Peak memory: ``ru_maxrss`` of the child (includes the embeddings, N x dim x 4 bytes, and the interpreter
with torch/faiss loaded, ~0.3-0.4 GB) and tracemalloc's peak (Python-heap allocations only).

    python benchmarks/bench_metrics.py                 # 1e4, 1e5, 1e6
    python benchmarks/bench_metrics.py --sizes 10000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def child(args: argparse.Namespace) -> None:
    import resource
    import time
    import tracemalloc

    import sklearn.metrics  # noqa: F401  (imported before tracemalloc starts: import cost is not the metric's)
    import torch

    from robustbench_dml.metrics import nmi_score, retrieval_metrics
    from robustbench_dml.runtime import set_threads

    threads = set_threads(args.threads)
    n = args.n
    g = torch.Generator().manual_seed(0)
    classes = max(1, n // args.class_size)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, args.dim, generator=g)
    emb = centres[labels] + args.spread * torch.randn(n, args.dim, generator=g)
    emb = torch.nn.functional.normalize(emb, dim=1)
    del centres
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full = n <= args.full_up_to
    nq = n if full else min(n, args.queries)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = retrieval_metrics(emb, labels, nmi=False, max_queries=None if full else nq, seed=0)
    t_knn = time.perf_counter() - t0
    t_nmi = None
    if n <= args.nmi_up_to:
        t0 = time.perf_counter()
        res["NMI"] = nmi_score(emb, labels, seed=0)
        t_nmi = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({
        "n": n, "dim": args.dim, "classes": classes, "threads": threads, "queries": nq,
        "t_knn_metrics_s": t_knn, "t_knn_metrics_full_est_s": t_knn * n / nq, "t_nmi_s": t_nmi,
        "rss_before_mb": base_rss, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tracemalloc_peak_mb": py_peak / 2**20, "embeddings_mb": n * args.dim * 4 / 2**20,
        "metrics": res,
    }))


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--class-size", type=int, default=100)
    ap.add_argument("--spread", type=float, default=2.5)
    ap.add_argument("--queries", type=int, default=1000, help="queries scored above --full-up-to")
    ap.add_argument("--full-up-to", type=int, default=10_000)
    ap.add_argument("--nmi-up-to", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n is not None:
        child(args)
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--n", str(n), "--dim", str(args.dim), "--class-size",
               str(args.class_size), "--spread", str(args.spread), "--queries", str(args.queries),
               "--full-up-to", str(args.full_up_to), "--nmi-up-to", str(args.nmi_up_to)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        nmi = "skipped" if row["t_nmi_s"] is None else f"{row['t_nmi_s']:.1f}s"
        m = row["metrics"]
        print(f"N={n:>9,} dim={row['dim']} classes={row['classes']:,} queries={row['queries']:,} "
              f"threads={row['threads']}: kNN metrics {row['t_knn_metrics_s']:.1f}s "
              f"(all queries ~{row['t_knn_metrics_full_est_s']:.0f}s), NMI {nmi}, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB (before metrics {row['rss_before_mb']:.0f} MB, "
              f"embeddings {row['embeddings_mb']:.0f} MB), tracemalloc peak {row['tracemalloc_peak_mb']:.1f} MB",
              flush=True)
        print("    " + ", ".join(f"{k}={v:.2f}" for k, v in m.items()), flush=True)
    for a, b in zip(rows, rows[1:]):
        r = b["n"] / a["n"]
        print(f"x{r:g} in N: kNN-metrics time (all queries) x{b['t_knn_metrics_full_est_s'] / a['t_knn_metrics_full_est_s']:.1f}"
              f" (O(N^2) predicts x{r * r:g}), per query x{(b['t_knn_metrics_full_est_s'] / b['n']) / (a['t_knn_metrics_full_est_s'] / a['n']):.1f}"
              f" (predicts x{r:g}), peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}, "
              f"RSS above embeddings+baseline: {a['peak_rss_mb'] - a['rss_before_mb']:.0f} -> "
              f"{b['peak_rss_mb'] - b['rss_before_mb']:.0f} MB")


if __name__ == "__main__":
    main()
