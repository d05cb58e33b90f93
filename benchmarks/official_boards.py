"""Build the official boards the package ships (``robustbench_dml/boards/<dataset>/<model>-seed<s>.json.gz``).

Each model is trained from its recipe (one thread, so the weights are the same on any machine of the same build),
evaluated with every suite asked for, and its entry written with the complete results (the evidence every load
re-derives the scores from, :mod:`robustbench_dml.leaderboard.official`) and the training's per-epoch log, after each
finished suite. Work resumes: training per epoch, evaluation per attack, and an entry already holding a suite's
result for the same weights keeps it. With ``--state DIR`` the finished attacks of unfinished evaluations live in
DIR, keyed by the weights' sha256: a build carried to another machine or session with DIR (the training is
deterministic) retrains and resumes at the next attack.

Models:

- ``digits``: the six defenses at ``dmlbench run --defense ID --dataset digits``'s defaults (the 28x28 preset on
  the whole training split: budget ``full``), all test queries;
- ``fashion``: the rows of ``benchmarks/defense_study.py`` (six defenses and the CA-TRIDE variants) at its ``cpu``
  budget (6,000 training images, 8 epochs, 8-step adversaries: budget ``cpu``), the first 1,000 test queries
  against the whole gallery.

Suites: ``rob28`` (both protocols) and ``rankaa28`` (corrected) by default; a strong suite attacks the first
:data:`STRONG_QUERIES` queries only (its cost; the board says how many).

    python benchmarks/official_boards.py --sets digits --suites rob28 --seeds 0,1 [--shard 0/2]
    python benchmarks/official_boards.py --sets digits,fashion --status   # what each board holds
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DIGITS = ("vanilla", "est", "act", "hm", "ca_tride", "mdprop")
FASHION_ROOT = str(ROOT.parent / "shared/data/fashion-mnist")
#: set -> (budget label, max queries)
SETS = {"digits": ("full", None), "fashion": ("cpu", 1000)}
#: the queries a strong suite attacks on either set: its search makes its attacks some 50 times rob28's
#: (``benchmarks/results/bench_rankaa.md``; version 3 took 30-70 minutes per Fashion-MNIST model on 128 queries on one
#: loaded core), so its rows cover the first 128 queries, those of the convergence study
#: (``benchmarks/rankaa_budget.py``), and say so
STRONG_QUERIES = 128


def models(data: str) -> list[tuple[str, str, dict]]:
    """(row name, defense id, defense params) of every model of a set."""
    if data == "digits":
        return [(d, d, {}) for d in DIGITS]
    from defense_study import BUDGETS, CONFIGS, params

    return [(name, d, params(d, options, BUDGETS["cpu"])) for name, (d, options) in CONFIGS.items()]


def train_config(data: str, defense: str, defense_params: dict, seed: int):
    from robustbench_dml.config import TrainConfig

    if data == "digits":
        return TrainConfig(defense=defense, dataset="digits", seed=seed, threads=1, defense_params=defense_params)
    from defense_study import BUDGETS

    return TrainConfig(defense=defense, dataset="fashion", data_root=FASHION_ROOT, seed=seed, threads=1,
                       train_subset=BUDGETS["cpu"]["train_subset"], defense_params=defense_params)


def build(data: str, name: str, defense: str, defense_params: dict, seed: int, suites: list[str], runs: Path,
          boards: Path, device: str, state: Path | None = None) -> Path:
    import torch

    from attacks.suites import get_suite
    from robustbench_dml.evaluation import EvalConfig, discard_state, evaluate
    from robustbench_dml.leaderboard.official import entry_file, write_entry
    from robustbench_dml.training import train

    torch.set_num_threads(1)
    budget, max_queries = SETS[data]
    cfg = train_config(data, defense, defense_params, seed)
    out = runs / data / name / f"seed{seed}"

    def epoch_line(r: dict) -> None:  # a plain line per epoch, so a build's log shows where it is
        print(f"{data}/{name}/seed{seed}: epoch {r['epoch']} loss {r['loss']:.4f} R@1 {r.get('R@1', '-')}",
              flush=True)

    t0 = time.perf_counter()
    summary = train(cfg, out, resume=True, on_epoch=epoch_line)
    print(f"{data}/{name}/seed{seed}: trained ({time.perf_counter() - t0:.0f} s)", flush=True)
    sha = json.loads((Path(summary.checkpoint) / "meta.json").read_text())["weights_sha256"]
    entry_path = entry_file(data, name, seed, root=boards)
    kept = {}
    if entry_path.exists():  # keep what an earlier build evaluated of the same weights
        old = json.loads(gzip.decompress(entry_path.read_bytes()))
        from robustbench_dml.numerics import cpu_blas_mode

        kept = {(e["result"]["suite"]["id"], e["result"]["suite"]["version"]): e  # same weights, same MKL mode
                for e in old["evaluations"]
                if e["recipe"]["weights_sha256"] == sha and e["result"]["numerics"].get("cpu_blas") == cpu_blas_mode()}
    asked = [get_suite(s) for s in suites]
    # earlier results stay, each with the machine it was made on, until a new one replaces them (None: this machine)
    done = {key: (e["result"], e["recipe"]["environment"]) for key, e in kept.items()}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    entry_path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> Path:
        return write_entry(entry_path, model=f"{name}-seed{seed}", recipe_train=cfg, weights_sha256=sha,
                           budget=budget, evaluations=[r for r, _ in done.values()],
                           created=dt.date.today().isoformat(), history=history,
                           environments=[env for _, env in done.values()])

    for suite in asked:
        queries = max_queries if suite.engine is None else min(max_queries or STRONG_QUERIES, STRONG_QUERIES)
        ev = EvalConfig(suite.name, max_queries=queries)
        key = (suite.id, suite.version)
        if key in kept and kept[key]["recipe"]["evaluate"]["max_queries"] == queries:
            continue
        t0 = time.perf_counter()
        state_dir = out / "eval_state" if state is None else state
        result = evaluate(summary.checkpoint, ev, device=device, state_dir=state_dir, data_root=cfg.data_root,
                          progress="log")  # plain lines: each finished attack, one at least every 30 s
        done[key] = (result.to_dict(), None)
        write()  # each finished suite at once, so a build stopped in the next one keeps it
        if state is not None:  # the entry holds it now; a kept folder keeps only unfinished evaluations
            discard_state(state_dir, result)
        print(f"{data}/{name}/seed{seed}: {suite.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return write()


def status(sets: list[str], suites: list[str], seeds: list[str], boards: Path) -> str:
    """A table per set: each model and seed, the queries its entry holds under each suite's current version (``-``:
    missing)."""
    from attacks.suites import get_suite
    from robustbench_dml.leaderboard.official import entry_file, entry_records

    asked = [get_suite(s) for s in suites]
    lines = []
    for data in sets:
        lines += [f"{data}: queries per suite (- missing)", "", "| model | seed | " + " | ".join(s.name for s in asked)
                  + " |", "|---|---|" + "---|" * len(asked)]
        for name, _, _ in models(data):
            for seed in seeds:
                path = entry_file(data, name, int(seed), root=boards)
                recs = {r.board: r for r in entry_records(path)} if path.exists() else {}
                cells = [str(recs[s.board].num_queries) if s.board in recs else "-" for s in asked]
                lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does (the rows reproduce through it)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="digits")
    p.add_argument("--suites", default="rob28,rankaa28")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--models", help="comma-separated row names (default: every model of the set)")
    p.add_argument("--shard", default="0/1", help="i/n: this process builds every n-th model from the i-th")
    p.add_argument("--runs", default=str(ROOT / "runs" / "official"))
    p.add_argument("--boards", default=str(ROOT / "robustbench_dml" / "boards"))
    p.add_argument("--state", help="keep the finished attacks of unfinished evaluations here (default: in each "
                                    "model's run folder): a folder kept between machines or sessions lets a build "
                                    "resume there after retraining, since the files are keyed by the weights' sha256")
    p.add_argument("--device", default="auto")
    p.add_argument("--status", action="store_true", help="print which rows each board holds (queries per suite) "
                                                        "and what is missing; build nothing")
    args = p.parse_args()
    if args.status:
        print(status(args.sets.split(","), args.suites.split(","), args.seeds.split(","), Path(args.boards)))
        return
    shard, shards = (int(v) for v in args.shard.split("/"))
    todo = [(data, name, d, prm, int(seed)) for data in args.sets.split(",") for name, d, prm in models(data)
            if not args.models or name in args.models.split(",") for seed in args.seeds.split(",")]
    for i, job in enumerate(todo):
        if i % shards == shard:
            print(build(*job, args.suites.split(","), Path(args.runs), Path(args.boards), args.device,
                        Path(args.state) if args.state else None), flush=True)


if __name__ == "__main__":
    main()
