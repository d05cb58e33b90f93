"""``dmlbench compare``: the papers' comparison table for runs, checkpoints or evaluation JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from robustbench_dml import protocols as P
from robustbench_dml.cli.leaderboard import FORMATS, add_columns, add_protocol, emit, parse_columns
from robustbench_dml.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare evaluated runs in the papers' table layout",
                       description="Each argument is a run directory, a checkpoint directory or an evaluation "
                                   "JSON file; run `dmlbench evaluate` first. Best value per column is bold; "
                                   "ERS/ARS ties within the bootstrap interval are shown as ties.")
    p.add_argument("results", nargs="+", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--suite", help="which evaluation to use when a run has several (default: the dataset's); two "
                                   "suites, e.g. rob28,rankaa28, put each run's scores under both side by side with "
                                   "the difference (how much the strong suite lowers them)")
    p.add_argument("--name", help="the By column of every row (default: your user name, as `run` records it)")
    p.add_argument("--format", choices=FORMATS, default="md", help="md (default), csv, latex or html")
    p.add_argument("--output", help="write to this new file instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--reference", action="store_true",
                   help="add the papers' published rows for the dataset (needs --protocol robrank)")
    add_protocol(p)
    add_columns(p)
    p.set_defaults(func=run)


def find_result(path: Path, suite: str | None) -> Path:
    """The evaluation JSON for ``path``: the file itself, or RUN/eval/SUITE[-overrides].json, or the checkpoint's
    own results (:func:`~robustbench_dml.cli.evaluate.eval_folder`; ``dmlbench evaluate``'s default names). The
    whole suite's file is
    preferred; of a suite evaluated only with overrides (``rankaa28-q64.json``), the one file; several are refused
    with their names."""
    if path.exists() and not path.is_dir():  # a file (a special one is refused when read)
        return path
    from attacks.suites import board_of
    from robustbench_dml.cli.evaluate import eval_folder

    for eval_dir in (path / "eval", eval_folder(path)):  # a run folder, or a checkpoint's own results
        if not eval_dir.is_dir():
            continue
        for name in [board_of(suite)] if suite else ["rob28", "rob224"]:
            if (eval_dir / f"{name}.json").is_file():
                return eval_dir / f"{name}.json"
            partial = sorted(eval_dir.glob(f"{name}-*.json"))
            if len(partial) == 1:
                return partial[0]
            if partial:
                raise UserError(f"{eval_dir} holds {len(partial)} {name} evaluations "
                                f"({', '.join(p.name for p in partial)}); pass the JSON file you mean")
    raise UserError(f"no {suite or 'rob28/rob224'} evaluation found for {path}; run `dmlbench evaluate "
                    f"--checkpoint ...{' --suite ' + suite if suite else ''}` first or pass the evaluation JSON file")


def load_records(paths, suite: str | None, protocol: str | None = None, name: str | None = None):
    """One record per result, by ``name`` (default: the user name, as ``run`` records it), and the result files
    read (an output may never be one of them); with ``protocol``, every result must hold that protocol (a one-line
    UserError)."""
    import getpass

    from robustbench_dml.files import read_bounded
    from robustbench_dml.leaderboard import record_from_result

    records, sources = [], []
    for p in paths:
        source = find_result(Path(p), suite)
        sources.append(source)
        try:
            data = json.loads(read_bounded(source, "result"))
        except json.JSONDecodeError as e:
            raise UserError(f"{source} is not valid JSON ({e.msg}, line {e.lineno})") from None
        try:
            record = record_from_result(data, submitter=name or getpass.getuser(), note=str(p))
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        if protocol is not None and protocol not in record.protocols:
            raise UserError(f"{source} holds the {', '.join(record.protocols)} protocol only; compare with "
                            f"--protocol {next(iter(record.protocols))}, or re-evaluate without --robrank-compat")
        records.append(record)
    suites = sorted({r.board for r in records})  # one suite version: v1's and v2's numbers are not comparable
    if len(suites) > 1:
        raise UserError(f"these results come from different suites ({', '.join(suites)}), whose numbers are not "
                        f"comparable; compare one suite at a time (--suite ID picks it in each run folder)")
    return records, tuple(sources)


def protocol_frame(records, protocol: str):
    """The records' rows of ``protocol``."""
    from robustbench_dml.leaderboard import records_to_frame

    frame = records_to_frame(records)
    return frame[frame["protocol"] == protocol].reset_index(drop=True)


def suite_gap(paths, suites: list[str], protocol: str, name: str | None, fmt: str) -> tuple[str, tuple[Path, ...]]:
    """Each run's ERS and ARS under two suites side by side, and the ARS difference (first minus second), rows by
    ARS under the second suite; and the result files read."""
    import math

    from robustbench_dml.columns import defense_title
    from robustbench_dml.leaderboard.tables import render_rows

    (first, read_first), (second, read_second) = (load_records(paths, s, protocol, name) for s in suites)
    rows = []
    for a, b in zip(first, second):
        if a.checkpoint_sha256 != b.checkpoint_sha256:
            raise UserError(f"{a.note}: its {suites[0]} and {suites[1]} results are of different weights")
        sa, sb = a.scores(protocol), b.scores(protocol)
        gap = None if None in (sa.ars, sb.ars) else sa.ars - sb.ars
        rows.append([defense_title(a.defense, a.defense_config), a.submitter, a.note, sa.ers, sb.ers, sa.ars, sb.ars,
                     gap])
    rows.sort(key=lambda r: (r[6] is None, -(r[6] or 0.0)))
    headers = ["Defense", "By", "Run", f"ERS {suites[0]}", f"ERS {suites[1]}", f"ARS {suites[0]}",
               f"ARS {suites[1]}", "ARS difference"]
    title = (f"{first[0].dataset}; {suites[0]} vs {suites[1]}; Protocol: {protocol}; ARS difference = {suites[0]} "
             f"- {suites[1]} (what {suites[1]} takes away); rows ranked by ARS under {suites[1]}")

    def cell(v) -> str | None:
        if isinstance(v, float):
            return f"{v:.1f}" if math.isfinite(v) else None
        return None if v is None else str(v)

    return render_rows(headers, [[cell(v) for v in r] for r in rows], fmt, title,
                       leading=(("dataset", first[0].dataset), ("protocol", protocol))), read_first + read_second


def run(args) -> int:
    from robustbench_dml.leaderboard import frames_concat, reference_frame, render

    columns = parse_columns(args.columns)
    if args.reference and args.protocol != P.ROBRANK:
        raise UserError(f"the papers' rows were measured with RobRank's code: compare with them using "
                        f"--protocol {P.ROBRANK} --reference")
    suites = [s.strip() for s in (args.suite or "").split(",") if s.strip()]
    if len(suites) == 2:
        text, read = suite_gap(args.results, suites, args.protocol, args.name, args.format)
        emit(text, args.output, args.overwrite, read)
        return 0
    if len(suites) > 2:
        raise UserError("--suite takes one suite, or two to put side by side (e.g. rob28,rankaa28)")
    records, read = load_records(args.results, args.suite, args.protocol, args.name)
    frame = protocol_frame(records, args.protocol)
    if args.reference:
        frame = frames_concat([frame, reference_frame(records[0].dataset)])
    emit(render(frame, args.format, columns=columns), args.output, args.overwrite, read)
    return 0
