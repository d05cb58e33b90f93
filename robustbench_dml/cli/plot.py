"""``dmlbench plot``: figures (PNG, PDF or SVG) of per-attack resistance terms, or of robustness against eps."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from robustbench_dml.cli.common import check_output
from robustbench_dml.cli.compare import find_result, load_records, protocol_frame
from robustbench_dml.cli.leaderboard import add_protocol
from robustbench_dml.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="write a figure: resistance terms per attack, or robustness against eps")
    p.add_argument("kind", choices=("resistance", "eps"),
                   help="resistance: bars of each attack's resistance term per run; eps: a score or raw attack "
                        "result against eps, from `evaluate --eps` sweeps")
    p.add_argument("results", nargs="+", metavar="RUN_CHECKPOINT_OR_JSON")
    p.add_argument("--score", choices=("ERS", "ARS"), default="ARS", help="terms of this score (resistance)")
    p.add_argument("--key", default="ERS", help="what to plot against eps: ERS, ARS or an attack key like CA+")
    p.add_argument("--output", required=True, help="new figure file to write: .png, .pdf or .svg")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    add_protocol(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from robustbench_dml.leaderboard import plot_eps_curve, plot_resistance
    from robustbench_dml.leaderboard.plots import figure_format

    try:
        figure_format(args.output)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_output(args.output, args.overwrite, tuple(Path(p) for p in args.results))
    if args.kind == "resistance":
        frame = protocol_frame(load_records(args.results, None, args.protocol)[0], args.protocol)
        plot_resistance(frame, args.output, score=args.score)
    else:
        from robustbench_dml.results import EvaluationResult

        curves: dict[str, list] = defaultdict(list)
        for p in args.results:
            result = EvaluationResult.from_json(find_result(Path(p), None))
            eps = result.suite.get("overrides", {}).get("eps")
            eps = eps if eps is not None else result.suite["params"]["eps"]
            label = f"{result.checkpoint['meta'].get('defense', '?')} {result.checkpoint['sha256'][:8]}"
            curves[label].append((float(eps), result.block(args.protocol)["raw"]))
        if not curves:
            raise UserError("no results to plot")
        plot_eps_curve({k: sorted(v, key=lambda t: t[0]) for k, v in curves.items()}, args.output, key=args.key,
                       protocol=args.protocol)
    print(args.output)
    return 0
