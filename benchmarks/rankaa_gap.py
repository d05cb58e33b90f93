"""How much the published suite overestimates robustness: every defense's checkpoint attacked with rankaa28
(``docs/protocol.md``, The strong suites), whose ``pgd`` part is rob28's corrected-protocol number on the same
queries and targets, so one evaluation per checkpoint gives both columns.

Checkpoints: the digits models of ``benchmarks/digits_worst_cases.py`` (every defense at ``dmlbench run``'s
defaults) and the Fashion-MNIST models of ``benchmarks/defense_study.py`` (seed 0); each must exist (run those
scripts first). Each evaluation covers the first ``--max-queries`` test queries and resumes per attack. Per model
the table gives ERS and ARS under rob28 (the ``pgd`` part) and rankaa28, the gap, the largest per-attack term gap,
whether every per-attack term under rankaa28 is at most rob28's, and the attacks on which the gradient-free check
did better (gradient masking suspected); then whether the ARS ranking of the defenses changes.

    python benchmarks/rankaa_gap.py [--max-queries 256] [--sets digits,fashion] [--suite rankaa28.v1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attacks.engine import PARTS

SETS = {
    "digits": ("runs/digits_worst_cases", ("vanilla", "est", "act", "hm", "ca_tride", "mdprop"), "{}/checkpoint", None),
    "fashion": ("runs/defense_study", ("vanilla", "est", "act", "hm", "ca_tride", "mdprop"), "{}/seed0/checkpoint",
                str(Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist")),
}


def measure(checkpoint: Path, max_queries: int, data_root: str | None, state: Path, suite: str) -> dict:
    from robustbench_dml import scoring
    from robustbench_dml.evaluation import EvalConfig, evaluate

    result = evaluate(checkpoint, EvalConfig(suite, max_queries=max_queries), state_dir=state,
                      data_root=data_root)
    pub, strong = result.engine_raw("pgd"), result.raw
    row = {"R@1": strong["R@1"], "masking": result.extra["engine"]["masking_suspected"]}
    for name in scoring.SCORES:
        row[f"rob28 {name}"], row[f"rankaa28 {name}"] = scoring.score(pub, name), scoring.score(strong, name)
    terms_pub, terms_strong = scoring.resistance_terms(pub, "ERS"), scoring.resistance_terms(strong, "ERS")
    gaps = {k: terms_pub[k] - terms_strong[k] for k in terms_pub}
    row["never weaker"] = all(g >= -1e-9 for g in gaps.values())
    # ARS of each part alone: the published PGD, APGD's first run (last and best iterate), both runs, the whole
    row["ARS by part"] = {part: scoring.score(result.engine_raw(part), "ARS") for part in PARTS}
    row["largest term gap"] = max(gaps.items(), key=lambda kv: kv[1])
    return row


def report(rows: dict[str, dict[str, dict]], max_queries: int, suite: str) -> str:
    lines = ["# rob28 against rankaa28: how much the published suite overestimates robustness", "",
             f"Each checkpoint attacked once with rankaa28 (`{suite}`) on its first {max_queries} test queries "
             "(corrected protocol); the rob28 columns are its `pgd` part, the published attacks on the same queries and "
             "targets. `never weaker`: every ERS term under rankaa28 is at most rob28's. `masking`: attacks on which the "
             "gradient-free check did better than the gradient attacks. `ARS by part`: the ARS of each part of the "
             "engine alone (`pgd` = rob28; `apgd` = APGD's first run, last iterate; `best_iterate` = its best "
             "iterate; `restarts` = the best over both APGD runs; `final` = the reported worst case).", "",
             f"Regenerate: `python benchmarks/rankaa_gap.py --max-queries {max_queries} --suite {suite}`", ""]
    for data, by_defense in rows.items():
        lines += [f"## {data}", "", "| defense | R@1 | ERS rob28 | ERS rankaa28 | gap | ARS rob28 | ARS rankaa28 | gap "
                  "| largest term gap | never weaker | masking | ARS by part: " + " / ".join(PARTS) + " |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for d, r in by_defense.items():
            key, gap = r["largest term gap"]
            lines.append(f"| {d} | {r['R@1']:.1f} | {r['rob28 ERS']:.1f} | {r['rankaa28 ERS']:.1f} | "
                         f"{r['rob28 ERS'] - r['rankaa28 ERS']:.1f} | {r['rob28 ARS']:.1f} | {r['rankaa28 ARS']:.1f} | "
                         f"{r['rob28 ARS'] - r['rankaa28 ARS']:.1f} | {key} {gap:.1f} | "
                         f"{'yes' if r['never weaker'] else 'NO'} | {', '.join(r['masking']) or '-'} | "
                         + " / ".join(f"{r['ARS by part'][part]:.1f}" for part in PARTS) + " |")
        order = {s: [d for d, _ in sorted(by_defense.items(), key=lambda kv: kv[1][f"{s} ARS"])]
                 for s in ("rob28", "rankaa28")}
        lines += ["", f"ARS ranking, least to most robust: rob28 {' < '.join(order['rob28'])}; rankaa28 "
                  f"{' < '.join(order['rankaa28'])}: "
                  f"{'unchanged' if order['rob28'] == order['rankaa28'] else 'CHANGED'}.", ""]
    return "\n".join(lines)


def main() -> None:
    from robustbench_dml.numerics import reproducible_cpu_blas

    reproducible_cpu_blas()  # before the first matrix product, as dmlbench does
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-queries", type=int, default=256)
    p.add_argument("--suite", default="rankaa28.v1", help="the strong suite (the report in results/ was measured "
                                                          "with version 1)")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/rankaa_gap")
    p.add_argument("--report", default=str(Path(__file__).parent / "results" / "rankaa_gap.md"))
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, dict]] = {}
    for data in args.sets.split(","):
        root, defenses, pattern, data_root = SETS[data]
        for d in defenses:
            ck = Path(root) / pattern.format(d)
            if not (ck / "meta.json").is_file():
                print(f"{data}/{d}: no checkpoint at {ck} yet, skipped", flush=True)
                continue
            rows.setdefault(data, {})[d] = row = measure(ck, args.max_queries, data_root, Path(args.out) / data / d,
                                                           args.suite)
            print(f"{data}/{d}: {json.dumps(row)}", flush=True)
            Path(args.report).write_text(report(rows, args.max_queries, args.suite))
    print(Path(args.report).read_text())


if __name__ == "__main__":
    main()
