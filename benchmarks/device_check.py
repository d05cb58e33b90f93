"""The device check: what a lent GPU machine runs, in one go and under ten minutes, to tell whether a GPU evaluation
gives the CPU's numbers and what it costs. It prints measurements, ratios and comparisons, not verdicts.

1. the CUDA-marked tests (``pytest -m gpu``);
2. a Fashion-MNIST checkpoint trained here on the CPU (seeded, two threads: the run that made
   ``benchmarks/results/device_check_reference.json``; its weights' sha256 says whether this machine's CPU
   reproduced it), then a full ``rob28`` on the GPU (all 10,000 queries against the 10,000-image gallery), timed
   against its bound (PGD iterations x one measured forward+backward), and its first queries compared, attack by
   attack and query by query, with the CPU's results on the same checkpoint (the committed reference when the
   weights match, else a CPU evaluation run here);
3. a 10^6-embedding gallery through the torch kNN path on the GPU (time, peak GPU memory) and faiss-gpu when it is
   installed, with the neighbours compared against the CPU's on a sample of queries;
4. one ``rob224`` batch of ResNet-18 (GTT, 32 steps, random weights) on the GPU: its time.

``--dry-run`` runs every step on the CPU at toy sizes, on the embedded digits (the test suite does, so the script
cannot rot);
``--make-reference`` writes the reference file from this machine's CPU. The numeric policy is the default
(:mod:`robustbench_dml.numerics`); ``--fast`` measures the fast one instead.

    python benchmarks/device_check.py --data-root .device/fashion-mnist --out $OUT   # on the GPU machine
    python benchmarks/device_check.py --make-reference                               # here, once
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "results" / "device_check_reference.json"
TRAIN = dict(defense="vanilla", dataset="fashion", seed=0, epochs=1, train_subset=6000, threads=2, device="cpu")
REFERENCE_QUERIES = 512  # four rob28 batches: the same random selections in a 512-query and a 10,000-query run


def say(*parts) -> None:
    print(*parts, flush=True)


def train_checkpoint(data_root: str, out: Path, dry: bool) -> Path:
    from robustbench_dml.config import TrainConfig
    from robustbench_dml.training import train

    # the dry run trains on the embedded digits (28x28 like Fashion-MNIST, small enough for the test suite)
    cfg = dict(TRAIN, dataset="digits", train_subset=256) if dry else dict(TRAIN, data_root=data_root)
    t0 = time.perf_counter()
    summary = train(TrainConfig(**cfg), out / "run", resume=True)
    say(f"train: {cfg['defense']} on {cfg['dataset']} ({cfg['train_subset']} images), CPU, "
        f"{time.perf_counter() - t0:.1f} s")
    return summary.checkpoint


def compare(gpu: dict, cpu: dict, n: int) -> None:
    """Per attack: the share of the first ``n`` queries whose results agree exactly, the largest difference, and
    the difference of the means (what a score sees)."""
    for protocol in cpu["protocols"]:
        a, b = gpu["protocols"][protocol]["per_query"], cpu["protocols"][protocol]["per_query"]
        for key in b:
            x, y = a[key][:n], b[key][:n]
            same = sum(u == v for u, v in zip(x, y)) / n
            worst = max(abs(u - v) for u, v in zip(x, y))
            say(f"  {protocol:9s} {key:5s} identical {100 * same:5.1f}%  max |diff| {worst:.4g}  "
                f"mean GPU {sum(x) / n:8.3f} CPU {sum(y) / n:8.3f}")


def rob28(checkpoint: Path, data_root: str, device: str, queries: int | None, numerics: str, attacks=None):
    from robustbench_dml.evaluation import EvalConfig, evaluate

    t0 = time.perf_counter()
    result = evaluate(checkpoint, EvalConfig("rob28", max_queries=queries, numerics=numerics, attacks=attacks),
                      device=device, data_root=data_root, benign_nmi=False)
    return result, time.perf_counter() - t0


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def knn_check(device: str, n: int) -> None:
    import torch

    from robustbench_dml.gallery import Gallery
    from robustbench_dml.knn import faiss_has_gpu

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, 128, generator=g), dim=1)
    labels = torch.randint(100, (n,), generator=g)
    queries = emb[:1024] + 0.01 * torch.randn(1024, 128, generator=g)
    cpu = Gallery(emb, labels, backend="torch")
    ref = cpu.knn(queries[:128], 10)[1]
    backends = ["torch"] + (["faiss"] if faiss_has_gpu() else [])
    if not device.startswith("cuda") or "faiss" not in backends:
        say("knn: faiss-gpu not available here; torch path only")
    for backend in backends:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        gal = Gallery(emb.to(device), labels.to(device), backend=backend)
        gal.knn(queries[:8].to(device), 10)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        _, idx = gal.knn(queries.to(device), 10)
        sync(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        same = bool(torch.equal(idx[:128].cpu(), ref))
        say(f"knn: {n:,} x 128 gallery, 1,024 queries, k 10, {backend} on {device}: {seconds:.3f} s, peak GPU memory "
            f"{peak:.2f} GiB, neighbours identical to the CPU's on 128 queries: {same}")


def rob224_batch(device: str, dry: bool) -> None:
    import torch

    import attacks
    from attacks.suites import get_suite
    from robustbench_dml import backbones
    from robustbench_dml.gallery import Gallery, embed_tensor
    from robustbench_dml.runtime import generator

    suite = get_suite("rob224")
    q, n, steps = (2, 16, 1) if dry else (suite.batch_size, 1024, suite.steps)
    model = backbones.create("resnet18", embedding_dim=512, pretrained=False).to(device).eval()
    images = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    gallery = Gallery(embed_tensor(model, images, batch_size=64), torch.arange(n) % 10, backend="torch")
    atk = attacks.create("GTT", model=model, eps=suite.eps, alpha=suite.alpha, steps=steps)
    atk(images[:q], gallery.labels[:q], gallery, generator=generator(0, "GTT", 0), query_index=torch.arange(q))
    sync(device)
    t0 = time.perf_counter()
    atk(images[:q], gallery.labels[:q], gallery, generator=generator(0, "GTT", 0), query_index=torch.arange(q))
    sync(device)
    say(f"rob224: one GTT batch of {q} queries, {steps} steps, ResNet-18 on {device}: {time.perf_counter() - t0:.2f} s")


def main() -> int:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = ROOT / ".device" / "fashion-mnist"
    p.add_argument("--data-root", default=str(default_data if default_data.is_dir()
                                              else ROOT.parent / "shared" / "data" / "fashion-mnist"))
    p.add_argument("--out", default="runs/device_check", help="folder for the checkpoint and results")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at toy sizes")
    p.add_argument("--make-reference", action="store_true", help="write the CPU reference file and stop")
    p.add_argument("--fast", action="store_const", const="fast", default="exact", dest="numerics")
    args = p.parse_args()
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run or args.make_reference else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        say("no CUDA device here; use --dry-run to exercise the script on the CPU")
        return 2
    say(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
        f"numerics {args.numerics}")

    checkpoint = train_checkpoint(args.data_root, out, args.dry_run)
    sha = json.loads((checkpoint / "meta.json").read_text())["weights_sha256"]
    if args.make_reference:
        result, seconds = rob28(checkpoint, args.data_root, "cpu", REFERENCE_QUERIES, "exact")
        REFERENCE.write_text(json.dumps({"weights_sha256": sha, "train": TRAIN, "queries": REFERENCE_QUERIES,
                                         "cpu_seconds": seconds, "result": json.loads(result.to_json())}) + "\n")
        say(f"reference: {REFERENCE} ({seconds:.0f} s)")
        return 0

    # 1. the CUDA-marked tests
    if not args.dry_run:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")],
                               capture_output=True, text=True)
        say("gpu tests: " + (tests.stdout.strip().splitlines() or ["no output"])[-1])

    # 2. a full rob28 against its bound, and the CPU's numbers on the same checkpoint
    queries = 8 if args.dry_run else None
    attacks = ["TMA", "GTM"] if args.dry_run else None
    result, seconds = rob28(checkpoint, args.data_root, device, queries, args.numerics, attacks)
    timing = result.extra["timing"]  # per attack: wall seconds and PGD iterations x one measured forward+backward
    wall = sum(t["wall_s"] for t in timing["attacks"].values())
    bound = sum(t["bound_s"] for t in timing["attacks"].values())
    say(f"rob28: {result.num_queries} queries on {device}: {seconds:.1f} s, attacks {wall:.1f} s; bound (PGD iterations "
        f"x one measured forward+backward, {timing['forward_backward_s'] * 1e3:.1f} ms) {bound:.1f} s; ratio "
        f"{wall / bound:.2f} (" + ", ".join(f"{a} {t['ratio']:.2f}" for a, t in timing["attacks"].items()) + ")")
    say(f"rob28 scores on {device}: " + ", ".join(
        f"{p} ERS {b['scores']['ERS']} ARS {b['scores']['ARS']}" for p, b in result.protocols.items()))
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else None
    n = min(REFERENCE_QUERIES, result.num_queries)
    if reference is not None and reference["weights_sha256"] == sha and not args.dry_run:
        say(f"compare: the CPU reference ({REFERENCE.name}, same weights) on the first {n} queries")
        cpu = reference["result"]
    else:
        why = "dry run" if args.dry_run else "this CPU trained other weights" if reference else "no reference file"
        say(f"compare: a CPU evaluation run here ({why}) on the first {n} queries")
        cpu = json.loads(rob28(checkpoint, args.data_root, "cpu", n, "exact", attacks)[0].to_json())
    compare(json.loads(result.to_json()), cpu, n)

    # 3. a large gallery; 4. one rob224 batch
    knn_check(device, 10_000 if args.dry_run else 1_000_000)
    rob224_batch(device, args.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
