"""Every defense as the README's main command trains it on the embedded digits data, attacked with rob28 under both
protocols: benign R@1, ERS, ARS, the overall worst case and the per-threat worst cases (``WC:candidate``,
``WC:query``, ``WC:recall``; :data:`robustbench_dml.scoring.THREATS`).

The question it answers: does a worst case separate the defenses? The overall one (any attack of the suite broke
the query) is 100% for every model because GTT's goal is met almost everywhere; the per-threat ones should be
near 100% for the undefended model and clearly lower for the adversarially trained ones.

Each run is ``dmlbench run --defense ID --dataset digits`` at its defaults (seed 0), so the vanilla and CA-TRIDE
rows also check the numbers the README quotes. Training resumes per epoch and evaluation per attack, so the script
can be stopped and restarted; the table is rewritten after each defense.

    python benchmarks/digits_worst_cases.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFENSES = ("vanilla", "est", "act", "hm", "ca_tride", "mdprop")
WORST = ("WC:candidate", "WC:query", "WC:recall")


def run_one(defense: str, out_root: Path) -> dict:
    import attacks
    from robustbench_dml.config import TrainConfig
    from robustbench_dml.evaluation import EvalConfig, evaluate
    from robustbench_dml.leaderboard import record_from_result
    from robustbench_dml.training import train

    out = out_root / defense
    row_path = out / "row.json"
    revisions = {a: attacks.ATTACKS.get(a).revision for a in attacks.list_attacks()}
    if row_path.exists():
        row = json.loads(row_path.read_text())
        if row.get("revisions") == revisions:
            return row  # else an attack changed since: evaluate again (unchanged attacks resume from their state)
    summary = train(TrainConfig(defense=defense, dataset="digits", seed=0), out, resume=True)
    # the epochs' own timings, so a resumed or already finished training reports what it cost
    t_train = sum(json.loads(line).get("seconds", 0.0) for line in (out / "history.jsonl").read_text().splitlines()
                  if line.strip())
    t0 = time.perf_counter()
    result = evaluate(summary.checkpoint, EvalConfig("rob28"), state_dir=out / "eval_state")
    t_eval = time.perf_counter() - t0
    record = record_from_result(result.to_dict(), submitter="benchmark")  # scores re-derived, as published
    row = {"defense": defense, "R@1": record.r1, "train_s": t_train, "eval_s": t_eval, "revisions": revisions,
           "protocols": {}}
    for protocol, s in record.protocols.items():
        cols = s.columns()
        row["protocols"][protocol] = {k: cols[k] for k in ("ERS", "ARS", "worst_case", *WORST)}
    row_path.write_text(json.dumps(row, indent=1))
    return row


def _num(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def report(rows: list[dict]) -> str:
    lines = ["# Worst cases on digits, every defense at the main command's defaults", "",
             "`dmlbench run --defense ID --dataset digits` (seed 0), rob28 on all 896 test queries, both protocols. "
             "`worst_case`: any attack broke the query; `WC:*`: per threat (candidate CA+/CA-, query QA+/QA-: an "
             "item moved from outside into the top 1% (+) or from the top 1% to the far half of the gallery (-); "
             "recall ES/LTM/GTM: the query's class left its top 1%, relative to the correctly answered queries). "
             "Lower worst cases are more robust. `eval s`: the last evaluation call (a resumed call counts only "
             "the attacks it recomputed).",
             "", "Regenerate: `python benchmarks/digits_worst_cases.py`", ""]
    for protocol in ("corrected", "robrank"):
        lines += [f"Protocol: {protocol}", "",
                  "| defense | R@1 | ERS | ARS | worst_case | " + " | ".join(WORST) + " | train s | eval s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            p = r["protocols"][protocol]
            lines.append(f"| {r['defense']} | {_num(r['R@1'])} | {_num(p['ERS'])} | {_num(p['ARS'])} | "
                         f"{_num(p['worst_case'])} | " + " | ".join(_num(p[k]) for k in WORST)
                         + f" | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
        lines.append("")
    missing = [d for d in DEFENSES if d not in {r["defense"] for r in rows}]
    if missing:
        lines += [f"Not measured yet: {', '.join(missing)} (the script resumes where it stopped).", ""]
    return "\n".join(lines)


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defenses", default=",".join(DEFENSES))
    p.add_argument("--out", default="runs/digits_worst_cases")
    p.add_argument("--report", default=str(Path(__file__).parent / "results" / "digits_worst_cases.md"))
    args = p.parse_args()
    out = Path(args.out)
    for defense in args.defenses.split(","):
        row = run_one(defense, out)
        print(f"{defense}: {json.dumps(row['protocols']['corrected'])}", flush=True)
        # every finished row, so several invocations (e.g. one per core) share one table
        rows = [json.loads((out / d / "row.json").read_text()) for d in DEFENSES if (out / d / "row.json").exists()]
        Path(args.report).write_text(report(rows))
    print(Path(args.report).read_text())


if __name__ == "__main__":
    main()
