"""Has the strong suite converged? ARS and every ERS term against the attack budget per query, the question
Croce and Hein answered for AutoAttack.

Each model is attacked once per attack with ``rankaa28plus`` (PGD, then ten 100-step APGD runs, five of them
targeted where the attack has alternative targets, then a 5,000-query random search), which records the worst
case per query after each run (:meth:`attacks.engine.Engine.ladder`): one run gives the whole curve, from rob28
(``g32``, the published PGD alone) through ``g132`` ... ``g1032`` (gradient evaluations per image) to
``g1032+s5000`` (the search joined). ``rankaa28`` version 1 (80 gradient evaluations, its own 24-step schedule)
runs beside it on the same queries and targets. The knee is the smallest budget whose ARS is within ``--tolerance``
(0.5) of the largest budget's on every finished model.

Models: the digits models of ``benchmarks/digits_worst_cases.py`` (``dmlbench run --defense ID --dataset digits``
defaults, seed 0) and the Fashion-MNIST models of ``benchmarks/defense_study.py`` (its ``cpu`` budget, seed 0,
in the run folders of ``benchmarks/official_boards.py``, whose recipe is the same, so each is trained once);
a missing checkpoint is trained first (one thread: the same weights on any machine of the same build). The unit of
work is one (model, suite, attack) on the first ``--max-queries`` test queries; its raw results (the mean over
queries of every ladder step, the search against the gradient runs, the masking diagnosis, the seconds) are kept
in ``--raw`` beside this script's report, so the study resumes across sessions and machines; ``--shard i/n``
splits the units among processes. Scores are derived from the raw results each time the report is written.

Candidates for the next version (:data:`CANDIDATES`, ``--suites LABEL``) run version 2's gradient runs with a random
search joined; the report sets each against the largest budget on every finished model (measured where its units
are done, bounded by version 2's ``g232`` elsewhere), so a cheaper knee than the largest budget can be shown where
the gradient ladder alone does not reach it. The ``rankaa28plus`` units also keep every query's value of every ladder
step and of the search, from which the report derives the search joined to each smaller gradient budget
(:func:`search_joined`; ``--per-query`` re-runs the units written before they were kept).

    python benchmarks/rankaa_budget.py [--sets digits,fashion] [--max-queries 256] [--shard 0/2] [--device auto]
    python benchmarks/rankaa_budget.py --report-only
    python benchmarks/rankaa_budget.py --sets fashion --models hm --suites rankaa28s1000 --max-queries 128
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFENSES = ("vanilla", "est", "act", "hm", "ca_tride", "mdprop")
SETS = {  # set -> (runs folder, checkpoint pattern, dataset, data root)
    "digits": ("runs/digits_worst_cases", "{}", "digits", None),
    "fashion": ("runs/official/fashion", "{}/seed0", "fashion", str(HERE.parents[1] / "shared/data/fashion-mnist")),
}
#: the suites every model is attacked with, by the label their unit files carry, and the version each label runs
SUITES = {"rankaa28": "rankaa28.v1", "rankaa28plus": "rankaa28plus.v1"}
#: candidates for the next version, by label: (search steps joined to version 2's gradient runs, column name). A
#: candidate runs version 2's engine (the same runs, so its `g232` is the curve's) with a random search of Square's
#: settings on every standing query whose points join the worst case; registered for this study only
#: (:func:`register_candidates`), run with ``--suites LABEL`` on the models where version 2 is not within the
#: tolerance
CANDIDATES = {"rankaa28s1000": (1000, "g232+s1000"), "rankaa28s5000": (5000, "g232+s5000")}


def register_candidates() -> None:
    """Register each candidate as a suite of this process (``dmlbench`` never sees them)."""
    from dataclasses import replace

    from attacks.suites import RANKAA28_V2, SUITES as REGISTRY

    for label, (steps, column) in CANDIDATES.items():
        if label not in REGISTRY.list():
            engine = replace(RANKAA28_V2.engine, check_queries=0, check_steps=0, search_steps=steps, search_p_init=0.8)
            suite = replace(RANKAA28_V2, id=label, version=1, engine=engine,
                            description=f"rankaa28 version 2 with a {steps}-query random search joined ({column})")
            REGISTRY.register(label)(lambda suite=suite: suite)


def suite_of(label: str) -> str:
    """The suite name a unit label runs."""
    return SUITES.get(label) or f"{label}.v1"
#: the extra models the study also measures: the issue's ACT check (3 epochs, 8-step training PGD)
EXTRA = {"act_e3": ("runs/act_digits_e3", "digits", {"epochs": 3, "defense_params": {"steps": 8}})}


def train_config(data: str, defense: str):
    """The TrainConfig that made the study's checkpoint of ``defense`` on ``data`` (the scripts' settings)."""
    import sys

    from robustbench_dml.config import TrainConfig

    if defense in EXTRA:
        _, dataset, kw = EXTRA[defense]
        return TrainConfig(defense="act", dataset=dataset, seed=0, threads=1, **kw)
    if data == "digits":
        return TrainConfig(defense=defense, dataset="digits", seed=0, threads=1)
    sys.path.insert(0, str(HERE))
    from defense_study import BUDGETS, CONFIGS, params

    budget = BUDGETS["cpu"]
    name, options = CONFIGS[defense]
    return TrainConfig(defense=name, dataset="fashion", data_root=SETS["fashion"][3], seed=0, threads=1,
                       train_subset=budget["train_subset"], defense_params=params(name, options, budget))


def models(sets: list[str]) -> list[tuple[str, str, Path, str | None]]:
    """(set, model name, run folder, data root) of every study model, in order."""
    out = []
    for data in sets:
        root, pattern, _, data_root = SETS[data]
        if data == "digits":
            out += [(data, name, Path(folder), None) for name, (folder, _, _) in EXTRA.items()]
        out += [(data, d, Path(root) / pattern.format(d), data_root) for d in DEFENSES]
    return out


def unit_path(raw: Path, data: str, model: str, suite: str, attack: str, queries: int) -> Path:
    return raw / f"q{queries}" / data / model / f"{suite}-{attack.replace('+', 'p').replace('-', 'm')}.json"


def run_unit(path: Path, checkpoint: Path, data_root: str | None, suite: str, attack: str, queries: int,
             device: str) -> dict:
    """One attack of ``suite`` on ``checkpoint``'s first ``queries`` queries; its raw results, written to ``path``."""
    from robustbench_dml.evaluation import EvalConfig, evaluate

    t0 = time.perf_counter()
    result = evaluate(checkpoint, EvalConfig(suite_of(suite), max_queries=queries, attacks=(attack,)), device=device,
                      data_root=data_root, benign_nmi=False, engine_per_query=True)
    engine = result.extra["engine"]
    unit = {"checkpoint_sha256": result.checkpoint["sha256"], "suite": result.suite["id"],
            "suite_hash": result.suite["hash"], "queries": result.num_queries, "attack": attack,
            "benign_R@1": result.benign["R@1"], "R@1": result.raw["R@1"],
            "parts": engine["parts"][attack], "check": engine["check"].get(attack, {}),
            "no_gradient": engine["no_gradient"].get(attack), "randomised": attack in engine["randomised"],
            "seconds": time.perf_counter() - t0, "device": result.device,
            "per_query": engine.get("per_query", {}).get(attack)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(unit, indent=1))
    tmp.replace(path)
    return unit


def ladder_points() -> list[tuple[str, str, float]]:
    """(column, where to read it, gradient evaluations per image) of the curve, in budget order."""
    from attacks.suites import get_suite

    plus, v1 = get_suite(SUITES["rankaa28plus"]), get_suite(SUITES["rankaa28"])
    points = [("rob28", "rankaa28plus:g32", 32.0), ("rankaa28 v1", "rankaa28:final", 32.0 + v1.engine.gradients)]
    for step in plus.engine.ladder(plus.steps)[1:]:
        grads = float(step[1:].split("+")[0])
        points.append((step, f"rankaa28plus:{step}", grads + (0.5 if "+s" in step else 0.0)))
    return sorted(points, key=lambda p: p[2])


def curves(units: dict[tuple[str, str], dict]) -> dict[str, dict[str, float]] | None:
    """Per curve point, the raw results of every scored key (None until every attack of both suites is done)."""
    import attacks
    from attacks.suites import get_suite

    attack_ids = get_suite("rankaa28plus").attack_ids
    if any((s, a) not in units for s in SUITES for a in attack_ids):
        return None
    out = {}
    for column, where, _ in ladder_points():
        suite, part = where.split(":")
        raw = {"R@1": units[(suite, attack_ids[0])]["benign_R@1"]}
        for a in attack_ids:
            for key in attacks.ATTACKS.get(a).keys:
                if key in units[(suite, a)]["parts"]:
                    raw[key] = units[(suite, a)]["parts"][key][part]
        out[column] = raw
    return out


def report(found: dict[tuple[str, str], dict[tuple[str, str], dict]], queries: int, tolerance: float) -> str:
    from robustbench_dml import scoring

    points = ladder_points()
    cols = [c for c, _, _ in points]
    lines = ["# Has rankaa28 converged? ARS against the attack budget", "",
             f"Each model attacked on its first {queries} test queries by `rankaa28plus` (one run records the worst case "
             "after each of its steps: `g32` is rob28's PGD alone, `gN` the worst case after N gradient evaluations per "
             "image and attack, `g1032+s5000` with the 5,000-query random search joined) and by `rankaa28` version 1 "
             "(80 gradient evaluations). Lower is a stronger attack. `masking`: attacks where the random search beat "
             "every gradient run on average, or the loss had no input gradient on a tenth of the queries.", "",
             f"Regenerate: `python benchmarks/rankaa_budget.py --max-queries {queries}` (resumes from "
             "`benchmarks/results/rankaa_budget/`; `--report-only` rewrites this file)", "",
             "## ARS per budget", "",
             "| set | model | R@1 | " + " | ".join(cols) + " | search adds | masking | attacks done |",
             "|---|---|---|" + "---|" * (len(cols) + 3)]
    ars: dict[tuple[str, str], dict[str, float]] = {}
    terms_at: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for (data, model), units in found.items():
        if len({u["checkpoint_sha256"] for u in units.values()}) > 1:
            lines.append(f"| {data} | {model} | units of several checkpoints: rerun to redo the stale ones |")
            continue
        c = curves(units)
        done = sum(1 for s, _ in units if s in SUITES)
        masking = sorted({u["attack"] for u in units.values() if u["suite"] == "rankaa28plus" and _masked(u)})
        if c is None:
            lines.append(f"| {data} | {model} | - | " + " | ".join("-" for _ in cols) +
                         f" | - | {', '.join(masking) or '-'} | {done}/{2 * 9} |")
            continue
        ars[(data, model)] = {col: scoring.score(raw, "ARS") for col, raw in c.items()}
        terms_at[(data, model)] = {col: scoring.resistance_terms(raw, "ERS") for col, raw in c.items()}
        a = ars[(data, model)]
        last_grad = [col for col in cols if "+s" not in col][-1]
        lines.append(f"| {data} | {model} | {c[cols[0]]['R@1']:.1f} | " + " | ".join(f"{a[col]:.1f}" for col in cols) +
                     f" | {a[last_grad] - a[cols[-1]]:.2f} | {', '.join(masking) or '-'} | {done}/{2 * 9} |")
    lines += ["", knee(ars, points, tolerance), ""]
    lines += candidates(found, ars, tolerance)
    lines += joined(found, ars, tolerance)
    lines += per_attack(found, cols)
    if terms_at:
        lines += ["## Every ERS term per budget", "",
                  "Resistance terms (the part of ERS each result contributes, 0 = fully broken, 100 = untouched).", ""]
        for (data, model), by_col in terms_at.items():
            keys = list(next(iter(by_col.values())))
            lines += [f"### {data} / {model}", "", "| budget | " + " | ".join(keys) + " |",
                      "|---|" + "---|" * len(keys)]
            lines += [f"| {col} | " + " | ".join(f"{by_col[col][k]:.1f}" for k in keys) + " |" for col in cols]
            lines.append("")
    return "\n".join(lines)


def candidates(found, ars: dict[tuple[str, str], dict[str, float]], tolerance: float) -> list[str]:
    """Each candidate for the next version against the largest budget on every finished model: measured where its
    nine units are done, else bounded by version 2's `g232` (the candidate runs the same gradient runs and only
    joins more points to them, so its ARS is at most that)."""
    import attacks
    from attacks.suites import get_suite
    from robustbench_dml import scoring

    if not ars:
        return []
    attack_ids = get_suite("rankaa28plus").attack_ids
    lines = ["## Candidates for the next version", "",
             "A candidate runs version 2's gradient runs (its `g232` must equal the curve's: `same runs`) and joins a "
             "random search. It passes on a model when its ARS is within the tolerance of the largest budget's; "
             "where it was not run, version 2's `g232` bounds it.", ""]
    for label, (steps, column) in CANDIDATES.items():
        lines += [f"### `{column}` ({label})", "",
                  f"| set | model | g232 | {column} | largest | within | same runs |", "|---|---|---|---|---|---|---|"]
        passes = []
        for (data, model), a in ars.items():
            units = found[(data, model)]
            largest = a[list(a)[-1]]
            mine = [units.get((label, att)) for att in attack_ids]
            if all(mine):
                raw = {"R@1": mine[0]["benign_R@1"]}
                same = True
                for att, unit in zip(attack_ids, mine):
                    for key in attacks.ATTACKS.get(att).keys:
                        if key in unit["parts"]:
                            raw[key] = unit["parts"][key]["final"]
                            same &= unit["parts"][key]["g232"] == units[("rankaa28plus", att)]["parts"][key]["g232"]
                value, how, same_cell = scoring.score(raw, "ARS"), "measured", "yes" if same else "NO"
            else:
                value, how, same_cell = a["g232"], f"bounded ({sum(map(bool, mine))}/9 units)", "-"
            ok = value - largest <= tolerance
            passes.append(ok)
            lines.append(f"| {data} | {model} | {a['g232']:.1f} | {value:.1f} ({how}) | {largest:.1f} | "
                         f"{'yes' if ok else 'no'} | {same_cell} |")
        lines += ["", f"`{column}` is within {tolerance} ARS of the largest budget on "
                  f"{sum(passes)} of {len(passes)} finished models.", ""]
    return lines


def search_joined(unit: dict, step: str):
    """Per scored key of a ``rankaa28plus`` unit, each query's worst case had its random search been joined to the
    gradient runs up to ladder step ``step`` (``gN``) instead of to all ten: the better of ``gN`` and the search's
    point (the search starts from the clean image, so its points do not depend on the runs before it; only its
    random draws may). Where the run cannot tell, conservatively ``gN``: a query whose search value equals the
    gradients' (not searched, because all the gradient runs together had reached the floor, or nothing better
    found). Returns ({key: (queries,) values}, {key: (queries,) bool, undetermined: so kept although all the runs
    did better}), or None for a unit without per-query values."""
    import torch

    from attacks.engine import resistance

    pq = unit.get("per_query")
    if not pq:
        return None
    values, undetermined = {}, {}
    for key, parts in pq["parts"].items():
        g = torch.tensor(parts[step], dtype=torch.float64)
        search = torch.tensor(pq["check"][key]["search"], dtype=torch.float64)
        last = torch.tensor(pq["check"][key]["gradient"], dtype=torch.float64)
        found = (search != last) & (resistance(key, search) < resistance(key, g))
        undetermined[key] = (search == last) & (resistance(key, last) < resistance(key, g))
        values[key] = torch.where(found, search, g)
    return values, undetermined


def joined(found, ars: dict[tuple[str, str], dict[str, float]], tolerance: float) -> list[str]:
    """The random search joined to each gradient budget ``gN`` on every finished model: derived from the largest
    run's per-query values (:func:`search_joined`) where its units kept them, measured where a candidate's units
    ran (``g232``; attack by attack, so a candidate run on the attacks whose derivation was undetermined settles
    them), else bounded by ``gN`` without the search (the search only adds points); and the smallest ``gN`` so
    joined that is within the tolerance of the largest budget on every finished model."""
    from attacks.suites import get_suite
    from robustbench_dml import scoring

    if not ars:
        return []
    plus = get_suite("rankaa28plus")
    attack_ids, steps = plus.attack_ids, [s for s in plus.engine.ladder(plus.steps)[1:] if "+s" not in s]
    search = plus.engine.search_steps
    lines = ["## The search joined to fewer gradient runs", "",
             f"Each cell: the ARS had the {search:,}-query random search been joined to the first gradient runs only "
             "(`gN+s`), against the largest budget. `d`: derived from the largest run's per-query values (per query "
             "the better of `gN` and the search's point; a query the search left at the gradients' value keeps "
             "`gN`'s, so a derived cell can only overstate the ARS); `m`: measured by a candidate's own run; `d+m`: "
             "the attacks a candidate ran measured, the others derived; `b`: "
             "bounded by `gN` without the search; `–`: a smaller budget passed by measurement. Undetermined: "
             "query-attack results where the derivation kept `gN`'s value although all ten runs did better.", "",
             "| set | model | " + " | ".join(f"{s}+s" for s in steps[:-1]) + " | largest | undetermined |",
             "|---|---|" + "---|" * (len(steps) + 1)]
    passing = {s: [] for s in steps[:-1]}
    for (data, model), a in ars.items():
        units = found[(data, model)]
        largest = a[list(a)[-1]]
        mine = [units[("rankaa28plus", att)] for att in attack_ids]
        measured = [units.get(("rankaa28s5000", att)) for att in attack_ids]
        cells, undetermined, shown = [], None, False
        for step in steps[:-1]:
            # per attack: the candidate's own unit where it ran (g232 only), else derived from the largest run
            own = measured if step == "g232" else [None] * len(mine)
            derived = [None if unit else search_joined(u, step) for u, unit in zip(mine, own)]
            if all(d or unit for d, unit in zip(derived, own)):
                raw = {"R@1": mine[0]["benign_R@1"]}
                for d, unit in zip(derived, own):
                    raw.update({k: v["final"] for k, v in unit["parts"].items()} if unit else
                               {k: float(v.mean()) for k, v in d[0].items()})
                value, how = scoring.score(raw, "ARS"), "m" if all(own) else "d+m" if any(own) else "d"
                if any(derived):
                    kept = sum(int(m.sum()) for d in derived if d for m in d[1].values())
                    undetermined = max(undetermined or 0, kept)
            elif shown:  # a smaller budget passed by measurement: more gradient runs only add points
                passing[step].append(True)
                cells.append("–")
                continue
            else:
                value, how = a[step], "b"
            ok = value - largest <= tolerance
            shown |= ok and how != "b"
            passing[step].append(ok)
            cells.append(f"{value:.1f} {how}{'' if ok else ' ✗'}")
        lines.append(f"| {data} | {model} | " + " | ".join(cells) + f" | {largest:.1f} | "
                     f"{'-' if undetermined is None else undetermined} |")
    knee_step = next((s for s in steps[:-1] if all(passing[s])), None)
    knee_step = f"{knee_step}+s{search}" if knee_step else None
    lines += ["", f"✗: more than {tolerance} ARS above the largest budget. Smallest gradient budget that, with the "
              f"search joined, is within {tolerance} ARS of the largest on all {len(ars)} finished models: "
              f"**{knee_step or 'none below the largest'}**. {verdict(knee_step)}", ""]
    return lines


def per_attack(found, cols: list[str]) -> list[str]:
    """Every finished rankaa28plus unit's ERS term per budget (rankaa28 v1's beside it), so a model's curve shows
    attack by attack before all nine are done."""
    import torch

    from attacks.engine import resistance

    lines = ["## ERS term per attack and budget (finished units)", "",
             "| set | model | key | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for (data, model), units in found.items():
        for (suite, attack), unit in sorted(units.items()):
            if suite != "rankaa28plus":
                continue
            v1 = units.get(("rankaa28", attack), {}).get("parts", {})
            for key, parts in unit["parts"].items():
                values = {**{c: parts.get(c) for c in cols}, "rob28": parts.get("g32"),
                          "rankaa28 v1": v1.get(key, {}).get("final")}
                cells = ["-" if values[c] is None else
                         f"{float(resistance(key, torch.tensor([values[c]], dtype=torch.float64))):.1f}" for c in cols]
                lines.append(f"| {data} | {model} | {key} | " + " | ".join(cells) + " |")
    return lines + [""]


def _masked(unit: dict) -> bool:
    from attacks.engine import resistance
    from robustbench_dml.evaluation import NO_GRADIENT_SHARE

    import torch

    beaten = any(resistance(k, torch.tensor([c["search"]], dtype=torch.float64)) <
                 resistance(k, torch.tensor([c["gradient"]], dtype=torch.float64)) for k, c in unit["check"].items())
    return beaten or (unit["no_gradient"] or 0.0) >= NO_GRADIENT_SHARE or unit["randomised"]


def knee(ars: dict[tuple[str, str], dict[str, float]], points, tolerance: float) -> str:
    """The smallest budget within ``tolerance`` ARS of the largest on every finished model, else per model."""
    if not ars:
        return "Knee: no model finished yet."
    cols = [c for c, _, _ in points]
    largest = cols[-1]

    def first_within(a: dict[str, float]) -> str:
        return next(c for c in cols if a[c] - a[largest] <= tolerance)

    per_model = {m: first_within(a) for m, a in ars.items()}
    order = {c: i for i, c in enumerate(cols)}
    overall = max(per_model.values(), key=order.__getitem__)
    detail = ", ".join(f"{d}/{m} {c}" for (d, m), c in per_model.items())
    return (f"Knee of the gradient runs alone (the smallest budget within {tolerance} ARS of `{largest}` on every one "
            f"of the {len(ars)} finished models): **{overall}**. Per model: {detail}.")


def verdict(knee_step: str | None) -> str:
    """Whether the current ``rankaa28`` sits at the knee ``knee_step`` (a ``gN+sM`` name, None: none)."""
    from attacks.suites import get_suite

    current = get_suite("rankaa28")
    frozen = current.engine.ladder(current.steps)[-1]
    return (f"`rankaa28` version {current.version} is frozen at `{frozen}` (its gradient runs are this run's first "
            "ones and its search the same search)" +
            ("." if frozen == knee_step else f"; the knee is at `{knee_step}`: a new version is due."))


def plot(found, path: Path) -> None:
    """ARS against gradient evaluations per image (log scale), one line per finished model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from robustbench_dml import scoring

    points = ladder_points()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (data, model), units in found.items():
        c = curves(units)
        if c is None or len({u["checkpoint_sha256"] for u in units.values()}) > 1:
            continue
        ax.plot([g for _, _, g in points], [scoring.score(c[col], "ARS") for col, _, _ in points],
                marker="o", ms=3, label=f"{data}/{model}", linestyle="-" if data == "digits" else "--")
    ax.set_xscale("log")
    ax.set_xlabel("gradient evaluations per image and attack (last point: + 5,000-query random search)")
    ax.set_ylabel("ARS (lower: stronger attack)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="digits,fashion")
    p.add_argument("--models", help="comma-separated model names, run in this order (default: all of each set)")
    p.add_argument("--attacks", help="comma-separated attack ids (default: the suite's nine)")
    p.add_argument("--suites", default=",".join(SUITES),
                   help=f"unit labels to run (default: the curve's; candidates: {', '.join(CANDIDATES)})")
    p.add_argument("--max-queries", type=int, default=256)
    p.add_argument("--tolerance", type=float, default=0.5)
    p.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th model from the i-th (a model's "
                                                 "training and attacks stay in one process)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--raw", default=str(HERE / "results" / "rankaa_budget"))
    p.add_argument("--report", default=str(HERE / "results" / "rankaa_budget.md"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--per-query", action="store_true",
                   help="also re-run the units written before the study kept per-query values (the search joined to "
                        "fewer gradient runs is derived from them)")
    args = p.parse_args()
    import torch

    from attacks.suites import get_suite
    from robustbench_dml.checkpoint import checkpoint_sha256
    from robustbench_dml.training import train

    torch.set_num_threads(args.threads)
    shard, shards = (int(v) for v in args.shard.split("/"))
    raw = Path(args.raw)
    chosen = models(args.sets.split(","))
    if args.models:  # in the order asked for
        names = args.models.split(",")
        chosen = sorted((m for m in chosen if m[1] in names), key=lambda m: names.index(m[1]))
    attack_ids = get_suite("rankaa28plus").attack_ids
    labels = args.suites.split(",")
    unknown = sorted(set(labels) - set(SUITES) - set(CANDIDATES))
    if unknown:
        p.error(f"unknown suite labels {', '.join(unknown)}; known: {', '.join([*SUITES, *CANDIDATES])}")
    register_candidates()
    todo = [(m, s, a) for i, m in enumerate(chosen) if i % shards == shard for s in labels for a in attack_ids
            if not args.attacks or a in args.attacks.split(",")]

    def write() -> None:  # the report covers every model with results, whatever this process was asked to run
        found = {}
        for data, model, _, _ in models(list(SETS)):
            units = {}
            for s in [*SUITES, *CANDIDATES]:
                for a in attack_ids:
                    path = unit_path(raw, data, model, s, a, args.max_queries)
                    if path.is_file():
                        units[(s, a)] = json.loads(path.read_text())
            if units:
                found[(data, model)] = units
        Path(args.report).write_text(report(found, args.max_queries, args.tolerance))
        plot(found, Path(args.report).with_suffix(".png"))

    if not args.report_only:
        for (data, model, folder, data_root), suite, attack in todo:
            path = unit_path(raw, data, model, suite, attack, args.max_queries)
            checkpoint = folder / "checkpoint"
            if path.is_file():
                unit = json.loads(path.read_text())
                stale = ((checkpoint / "meta.json").is_file()
                         and unit["checkpoint_sha256"] != checkpoint_sha256(checkpoint))
                if not stale and not (args.per_query and suite == "rankaa28plus" and not unit.get("per_query")):
                    continue  # done (on these weights, when they are here to tell)
            if not (checkpoint / "meta.json").is_file():
                print(f"{data}/{model}: training", flush=True)
                train(train_config(data, model), folder, resume=True)
            unit = run_unit(path, checkpoint, data_root, suite, attack, args.max_queries, args.device)
            ladder = unit["parts"]
            print(f"{data}/{model} {suite} {attack}: {unit['seconds']:.0f} s, "
                  + ", ".join(f"{k} {v.get('final', math.nan):.2f}" for k, v in ladder.items()), flush=True)
            write()
    write()
    print(Path(args.report).read_text())


if __name__ == "__main__":
    main()
