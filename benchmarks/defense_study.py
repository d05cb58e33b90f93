"""The defense study: every defense through the same harness and budget on the genuine Fashion-MNIST, attacked
with ``rob28`` under ``--robrank-compat`` (the published protocol), several training seeds, bootstrap intervals,
and the verdict on the published ordering vanilla < EST < ACT < HM < CA-TRIDE in ARS.

Rows (``CONFIGS``): vanilla, EST, ACT, HM (its headline config: Softhard source, LGA, ICS), MDProp (c2f2bn),
CA-TRIDE in its four collapseness weightings (the default slides_detached, the slides' formula with the gradient
through the weights, released, research build) and its two single-phase ablations CA-ANP and CA-CAP (default
weighting).

Budget (``--budget cpu``, the default): a seeded class-stratified subset of ``--train-subset`` training images
(6,000 of 60,000: every class in proportion, the same subset for every seed), 8 epochs, 8-step training
adversaries for every PGD defense (EST, ACT, HM: step 12/255, the published 32 x 3/255 reach; CA-TRIDE: its
preset rule 2 eps / steps, ramped), rob28 on the first ``--max-queries`` 1,000 test queries against the whole
10,000-image gallery. ``--budget gpu``: the published schedules (60,000 images, 32-step adversaries, 16 for
CA-TRIDE, all 10,000 queries); a GPU machine runs it, the CPU would need weeks.

The ``cpu`` rows are the official Fashion-MNIST board's (``benchmarks/official_boards.py --sets fashion`` trains and
evaluates exactly these configurations, and the package ships the entries): a row with an entry is read from it (the
``robrank`` protocol's scores, re-derived from the per-query results; the adversary's training gains from the entry's
training log, or for an entry built without one from the run's ``history.jsonl`` when the run folder is on this
machine), so the study and the board never disagree. A row without one is trained and evaluated here (``--out``),
as every ``gpu`` row is. Every run resumes (training per epoch, evaluation per attack), so the study can be stopped
and restarted; after each row the table is rewritten to ``--report``, with the verdicts on the published ordering
and on CA-TRIDE's default weighting (:func:`weighting_verdict`). Rows measured before CA-TRIDE's lambda rule and
L_TR placement changed (lambda extrapolated to 0 on 28x28 data, L_TR on every step) are kept, frozen, in
``benchmarks/results/defense_study_cpu_before.md``.

    python benchmarks/defense_study.py --report-only            # the table from the official entries
    python benchmarks/defense_study.py --seeds 0,1             # and train what no entry holds
    python benchmarks/defense_study.py --budget gpu --seeds 0,1,2 --out runs/study_gpu
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

# row name -> (defense id, defense options); the step counts and alphas are set per budget in ``params``
CONFIGS: dict[str, tuple[str, dict]] = {
    "vanilla": ("vanilla", {}),
    "est": ("est", {}),
    "act": ("act", {}),
    "hm": ("hm", {}),
    "mdprop": ("mdprop", {}),
    "ca_tride": ("ca_tride", {}),
    "ca_tride[slides]": ("ca_tride", {"weighting": "slides"}),
    "ca_tride[released]": ("ca_tride", {"weighting": "released"}),
    "ca_tride[research_build]": ("ca_tride", {"weighting": "research_build"}),
    "ca_anp": ("ca_tride", {"mode": "anp"}),
    "ca_cap": ("ca_tride", {"mode": "cap"}),
}
PUBLISHED_ORDER = ("vanilla", "est", "act", "hm", "ca_tride")
BUDGETS = {
    "cpu": {"train_subset": 6000, "steps": 8, "ca_steps": 8, "max_queries": 1000},
    "gpu": {"train_subset": None, "steps": 32, "ca_steps": 16, "max_queries": None},
}
COLUMNS = ("R@1", "CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")


def params(defense: str, options: dict, budget: dict) -> dict:
    """The defense options of one row under ``budget``: 8 (or 32) steps keeping the published reach of 32 x 3/255
    for EST/ACT/HM; CA-TRIDE's step follows its preset rule (2 eps / steps)."""
    if defense in ("est", "act", "hm"):
        return {**options, "steps": budget["steps"], "alpha": 32 * (3 / 255) / budget["steps"]}
    if defense == "ca_tride":
        return {**options, "steps": budget["ca_steps"]}
    return dict(options)


ROOT = Path(__file__).resolve().parents[1]
#: where benchmarks/official_boards.py trains the official rows (their histories)
OFFICIAL_RUNS = ROOT / "runs" / "official" / "fashion"
#: ProtocolScores field of each raw column (R@1: the attacked queries' own, which the resistance terms use)
FIELDS = {"R@1": "r1", "CA+": "ca_plus", "CA-": "ca_minus", "QA+": "qa_plus", "QA-": "qa_minus", "TMA": "tma",
          "ES:D": "es_d", "ES:R": "es_r", "LTM": "ltm", "GTM": "gtm", "GTT": "gtt"}


def official_row(name: str, seed: int) -> dict | None:
    """The ``cpu`` row of ``name`` at ``seed`` from the official Fashion-MNIST entry, or None without one."""
    from robustbench_dml.leaderboard.official import entry_file, entry_history, entry_records

    path = entry_file("fashion", name, seed)
    records = entry_records(path, board="rob28") if path.is_file() else []
    if not records:
        return None
    rec = records[0]
    ps = rec.protocols["robrank"]
    history = entry_history(path) or _run_history(OFFICIAL_RUNS / name / f"seed{seed}", rec.checkpoint_sha256)
    return {"name": name, "seed": seed, "source": "official", **{k: getattr(ps, f) for k, f in FIELDS.items()},
            "benign_R@1": rec.r1, "entanglement": rec.entanglement, "intra": rec.intra_class_distance,
            "inter": rec.inter_class_distance, "ERS": ps.ers, "ERS_ci": [ps.ers_lo, ps.ers_hi], "ARS": ps.ars,
            "ARS_ci": [ps.ars_lo, ps.ars_hi], "adv_gain": _mean(history, "adv_gain"),
            "adv_gain_cap": _mean(history, "adv_gain_cap"), "adv_gain_anp": _mean(history, "adv_gain_anp"),
            "s_per_epoch": _mean(history, "seconds"), "eval_s": 0.0}


def run_one(name: str, seed: int, args, budget: dict) -> dict:
    from robustbench_dml.config import TrainConfig
    from robustbench_dml.evaluation import EvalConfig, evaluate
    from robustbench_dml.training import train

    if args.budget == "cpu" and (row := official_row(name, seed)) is not None:
        return row
    defense, options = CONFIGS[name]
    out = Path(args.out) / name / f"seed{seed}"
    row_path = out / "row.json"
    if row_path.exists():
        return json.loads(row_path.read_text())
    t0 = time.perf_counter()
    summary = train(TrainConfig(defense=defense, dataset="fashion", data_root=args.data_root, seed=seed,
                                train_subset=budget["train_subset"], threads=args.threads,
                                defense_params=params(defense, options, budget)), out, resume=True)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(summary.checkpoint, EvalConfig("rob28", max_queries=budget["max_queries"], robrank_compat=True),
                      state_dir=out / "eval_state", data_root=args.data_root)
    history = _history(out / "history.jsonl")
    row = {"name": name, "seed": seed, "source": "local", **{k: result.raw[k] for k in COLUMNS if k in result.raw},
           "benign_R@1": result.benign["R@1"], "entanglement": result.benign.get("entanglement"),
           "intra": result.benign.get("intra_class_distance"), "inter": result.benign.get("inter_class_distance"),
           "ERS": result.scores["ERS"], "ERS_ci": result.scores["ERS_ci"], "ARS": result.scores["ARS"],
           "ARS_ci": result.scores["ARS_ci"], "adv_gain": _mean(history, "adv_gain"),
           "adv_gain_cap": _mean(history, "adv_gain_cap"), "adv_gain_anp": _mean(history, "adv_gain_anp"),
           "train_s": t_train, "eval_s": time.perf_counter() - t0, "s_per_epoch": summary.seconds_per_epoch,
           "defense_params": params(defense, options, budget)}
    row_path.write_text(json.dumps(row, indent=1))
    return row


def _history(path: Path) -> list[dict]:
    """A run's ``history.jsonl`` records ([] when the file is not on this machine)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _run_history(run: Path, weights_sha256: str) -> list[dict]:
    """The log of the run folder that trained these weights ([] for a retraining under way, or other weights)."""
    meta = run / "checkpoint" / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("weights_sha256") != weights_sha256:
        return []
    return _history(run / "history.jsonl")


def _mean(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return sum(values) / len(values) if values else None


def _num(v, digits=1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(rows: list[dict], args, budget: dict) -> str:
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    head = ("| defense | seed | R@1 | " + " | ".join(COLUMNS[1:]) + " | ERS [95% CI] | ARS [95% CI] | adv_gain "
            "(CAP / ANP) | intra / inter | entanglement | s/epoch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in CONFIGS:
        for r in sorted(by_name.get(name, []), key=lambda r: r["seed"]):
            digits = {"TMA": 3, "ES:D": 3}
            gain = _num(r["adv_gain"], 3)
            if r.get("adv_gain_cap") is not None:
                gain += f" ({_num(r['adv_gain_cap'], 3)} / {_num(r.get('adv_gain_anp'), 3)})"
            mark = "*" if r.get("source") != "official" else ""
            lines.append(f"| {name}{mark} | {r['seed']} | {_num(r['benign_R@1'])} | "
                         + " | ".join(_num(r.get(c), digits.get(c, 1)) for c in COLUMNS[1:])
                         + f" | {_num(r['ERS'])} [{_num(r['ERS_ci'][0])}, {_num(r['ERS_ci'][1])}]"
                         + f" | {_num(r['ARS'])} [{_num(r['ARS_ci'][0])}, {_num(r['ARS_ci'][1])}]"
                         + f" | {gain} | {_num(r.get('intra'), 3)} / {_num(r.get('inter'), 3)}"
                         + f" | {_num(r.get('entanglement'), 3)} | {_num(r['s_per_epoch'], 0)} |")
    means = {n: {k: sum(r[k] for r in rs) / len(rs) for k in ("ARS", "ERS", "benign_R@1")}
             for n, rs in by_name.items()}
    summary = ["| defense | seeds | R@1 | ERS | ARS |", "|---|---|---|---|---|"]
    for name in sorted(means, key=lambda n: means[n]["ARS"]):
        m = means[name]
        summary.append(f"| {name} | {len(by_name[name])} | {_num(m['benign_R@1'])} | {_num(m['ERS'])} | "
                       f"{_num(m['ARS'])} |")
    present = [n for n in PUBLISHED_ORDER if n in means]
    observed = sorted(present, key=lambda n: means[n]["ARS"])
    missing = [n for n in PUBLISHED_ORDER if n not in means]
    verdict = (f"Published ordering in ARS (vanilla < EST < ACT < HM < CA-TRIDE): observed "
               f"{' < '.join(observed)}; "
               + (f"no verdict yet, {', '.join(missing)} not measured." if missing else
                  "it holds." if observed == present else "it does not hold."))
    seeds = ",".join(str(s) for s in sorted({r["seed"] for r in rows}))
    explained = inversions(by_name, means)
    variants = [n for n in CONFIGS if n.startswith("ca_") and n in means]
    if len(variants) > 1:
        verdict += ("\n\nCA-TRIDE's variants, mean ARS (seeds): " + "; ".join(
            f"{n} {means[n]['ARS']:.1f} ({len(by_name[n])})" for n in variants) + ".")
    if "mdprop" in means and "vanilla" in means:
        from attacks.suites import ROB28
        from defenses.mdprop import MDPropConfig

        eps, m, v = MDPropConfig.for_preset("28").eps, means["mdprop"], means["vanilla"]
        verdict += (f"\n\nMDProp is not in the published ordering: R@1 {m['benign_R@1']:.1f} against vanilla's "
                    f"{v['benign_R@1']:.1f}, ARS {m['ARS']:.1f} against {v['ARS']:.1f}. Its adversary is a one-step "
                    f"feature attack of eps {eps * 255:.2f}/255 (the paper's 0.01 in normalised input space), "
                    f"1/{ROB28.eps / eps:.0f} of rob28's {ROB28.eps * 255:.0f}/255: it buys clean R@1, as its paper "
                    "reports, not robustness at rob28's radius.")
    weighting = weighting_verdict(by_name)
    settings = (f"Fashion-MNIST (genuine, `{Path(args.data_root).name}`); training subset "
                f"{budget['train_subset'] or 'all 60,000'} images; 8 epochs; training PGD {budget['steps']} steps "
                f"(CA-TRIDE {budget['ca_steps']}); rob28 on the first {budget['max_queries'] or 10000} test "
                f"queries, eval seed 0, scored under the robrank protocol (the published one); seeds measured so far: "
                f"{seeds}. Rows marked `*` were trained and evaluated by this script; the others are the official "
                "board's entries. intra / inter: the mean same-class and different-class distances of the normalised "
                "test embeddings (their ratio is the entanglement). Rows measured before CA-TRIDE's lambda rule and "
                "L_TR placement changed: `defense_study_cpu_before.md`.")
    return (f"# Defense study (budget `{args.budget}`)\n\n{settings}\n\nRegenerate: `python "
            f"benchmarks/defense_study.py --budget {args.budget} --seeds 0,1` (resumes; `--report-only` rewrites "
            "this table from the finished rows)\n\n"
            + "\n".join(lines) + "\n\nMean over seeds, ordered by ARS:\n\n" + "\n".join(summary)
            + f"\n\n{verdict}\n" + ("\n" + "\n".join(explained) + "\n" if explained else "")
            + ("\n" + "\n".join(weighting) + "\n" if weighting else ""))


def weighting_verdict(by_name: dict[str, list[dict]]) -> list[str]:
    """Which collapseness weighting CA-TRIDE should default to, by three tests over the seeds measured: (a) its
    adversary attacks in both phases (mean ``adv_gain_cap`` > 0 and mean ``adv_gain_anp`` > 0: the gains are on the
    training loss, and ANP's objective holds the assist, which pulls collapsed anchors back, so > 0 means its attack
    outweighs the pull back), (b) the space does not shrink more than HM's (mean inter-class distance at least HM's
    on the same seeds), (c) among the weightings passing both, the best mean ARS. Rows are the alternating CA-TRIDE
    ones (not the single-phase ablations). A test without its measurement (an entry built without its training log,
    a seed HM lacks) is ``-``, and the verdict waits for it."""
    from defenses.ca_tride import CATRIDEConfig

    rows = {n: by_name[n] for n, (defense, opts) in CONFIGS.items()
            if defense == "ca_tride" and "mode" not in opts and n in by_name}
    if not rows or "hm" not in by_name:
        return []
    hm = {r["seed"]: r["inter"] for r in by_name["hm"] if r.get("inter") is not None}

    def mean(values: list) -> float | None:
        return None if not values or any(v is None for v in values) else sum(values) / len(values)

    def mark(test: bool | None) -> str:
        return "-" if test is None else "yes" if test else "no"

    lines = ["Default weighting (CA-TRIDE's alternating rows): (a) the adversary attacks in both phases (mean "
             "adv_gain_cap > 0 and adv_gain_anp > 0), (b) the mean inter-class distance is at least HM's on the same "
             "seeds, (c) the best ARS of the weightings passing both:", "",
             "| weighting | seeds | adv_gain CAP / ANP | (a) | inter-class (HM) | (b) | ARS |",
             "|---|---|---|---|---|---|---|"]
    passing, pending = {}, []
    for name, rs in rows.items():
        weighting = CONFIGS[name][1].get("weighting", CATRIDEConfig.weighting)
        cap, anp = mean([r.get("adv_gain_cap") for r in rs]), mean([r.get("adv_gain_anp") for r in rs])
        inter = mean([r.get("inter") for r in rs]) if all(r["seed"] in hm for r in rs) else None
        ref = mean([hm[r["seed"]] for r in rs]) if inter is not None else None
        ars = sum(r["ARS"] for r in rs) / len(rs)
        a = None if cap is None or anp is None else cap > 0 and anp > 0
        b = None if inter is None or ref is None else inter >= ref
        if a and b:
            passing[weighting] = ars
        if None in (a, b) and a is not False and b is not False:
            pending.append(weighting)
        lines.append(f"| `{weighting}` | {','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | "
                     f"{_num(cap, 3)} / {_num(anp, 3)} | {mark(a)} | {_num(inter, 3)} ({_num(ref, 3)}) | {mark(b)} | "
                     f"{ars:.1f} |")
    best = max(passing, key=passing.get) if passing else None
    if pending:
        lines += ["", "Verdict pending: " + ", ".join(f"`{w}`" for w in pending)
                  + (" lacks" if len(pending) == 1 else " lack") + " a measurement (-)"
                  + (f"; of the rest `{best}` passes (a) and (b) with the best ARS ({passing[best]:.1f})."
                     if best else ".")]
    elif best:
        lines += ["", f"Verdict: `{best}` passes (a) and (b) with the best ARS ({passing[best]:.1f}) of those that do."]
    else:
        lines += ["", "Verdict: no weighting passes (a) and (b) together (the table says which test each fails); the "
                  f"default stays the package's, `{CATRIDEConfig().weighting}` (docs/training.md, \"Which weighting is "
                  "the default\", says why)."]
    return lines


def inversions(by_name: dict[str, list[dict]], means: dict[str, dict]) -> list[str]:
    """Every pair the published order puts one way and the measured mean ARS the other, with what drives it: the ARS
    terms that differ most (seed means), benign R@1, the adversary's mean loss gain in training, and whether the
    difference is within the noise (seed ranges or 95% bootstrap intervals overlap: then it is no inversion)."""
    from robustbench_dml import scoring

    def terms(name: str) -> dict[str, float]:
        rows = by_name[name]
        per_seed = [scoring.resistance_terms({k: r[k] for k in scoring.ARS_KEYS}, "ARS") for r in rows]
        return {t: sum(p[t] for p in per_seed) / len(per_seed) for t in per_seed[0]}

    def gain(name: str) -> float | None:
        values = [r["adv_gain"] for r in by_name[name] if r.get("adv_gain") is not None]
        return sum(values) / len(values) if values else None

    out = []
    present = [n for n in PUBLISHED_ORDER if n in means]
    for i, low in enumerate(present):
        for high in present[i + 1:]:
            if means[low]["ARS"] <= means[high]["ARS"]:
                continue
            tl, th = terms(low), terms(high)
            drivers = sorted(tl, key=lambda t: th[t] - tl[t])[:3]
            lo_range = [r["ARS"] for r in by_name[low]]
            hi_range = [r["ARS"] for r in by_name[high]]
            # noise: the seeds' ARS ranges overlap, or some pair of rows' 95% bootstrap intervals does
            overlap = min(lo_range) <= max(hi_range) or any(
                a["ARS_ci"][0] <= b["ARS_ci"][1] for a in by_name[low] for b in by_name[high])
            out.append(f"- {low} above {high} by {means[low]['ARS'] - means[high]['ARS']:.1f} ARS "
                       f"({'within' if overlap else 'beyond'} the noise; seeds {low} "
                       f"{', '.join(f'{v:.1f}' for v in lo_range)}, {high} {', '.join(f'{v:.1f}' for v in hi_range)}); "
                       "largest term differences: "
                       + ", ".join(f"{t} {tl[t]:.1f} vs {th[t]:.1f}" for t in drivers)
                       + f"; benign R@1 {means[low]['benign_R@1']:.1f} vs {means[high]['benign_R@1']:.1f}; "
                       f"training adv_gain {_num(gain(low), 3)} vs {_num(gain(high), 3)}.")
    return (["Inversions of the published order, and the measurements behind them:", ""] + out) if out else []


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist"))
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rows", default=",".join(CONFIGS), help="comma-separated row names (default: all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/defense_study")
    p.add_argument("--report", default=None, help="markdown table (default benchmarks/results/defense_study_BUDGET.md)")
    p.add_argument("--report-only", action="store_true", help="rewrite the table from the finished rows, run nothing")
    args = p.parse_args()
    budget = BUDGETS[args.budget]
    report_path = Path(args.report or Path(__file__).parent / "results" / f"defense_study_{args.budget}.md")
    names = args.rows.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown rows {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in [] if args.report_only else seeds:
        for name in names:
            r = run_one(name, seed, args, budget)
            print(f"{name} seed {seed}: R@1 {r['benign_R@1']:.1f} ERS {r['ERS']:.1f} ARS {r['ARS']:.1f} "
                  f"({r['s_per_epoch']:.0f} s/epoch, eval {r['eval_s']:.0f} s)", flush=True)
            report_path.write_text(report(finished_rows(Path(args.out), args.budget, seeds), args, budget))
    report_path.write_text(report(finished_rows(Path(args.out), args.budget, seeds), args, budget))
    print(report_path.read_text())


def finished_rows(out: Path, budget: str, seeds: list[int]) -> list[dict]:
    """Every finished row: at the ``cpu`` budget each official entry's of ``seeds``, then every row under ``out``
    that no entry holds (all rows and seeds run so far, by this call or earlier ones)."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/seed*/row.json"))]
    rows = [r for r in rows if r["name"] in CONFIGS]
    if budget != "cpu":
        return rows
    official = [r for name in CONFIGS for seed in seeds if (r := official_row(name, seed)) is not None]
    held = {(r["name"], r["seed"]) for r in official}
    return official + [r for r in rows if (r["name"], r["seed"]) not in held]


if __name__ == "__main__":
    main()
