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
    p.add_argument("--suite", help="which evaluation to use when a run has several (default: the dataset's)")
    p.add_argument("--format", choices=FORMATS, default="md", help="md (default), csv, latex or html")
    p.add_argument("--output", help="write to this new file instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--reference", action="store_true",
                   help="add the papers' published rows for the dataset (needs --protocol robrank)")
    add_protocol(p)
    add_columns(p)
    p.set_defaults(func=run)


def find_result(path: Path, suite: str | None) -> Path:
    """The evaluation JSON for ``path``: the file itself, or RUN/eval/SUITE.json, or CHECKPOINT/../eval/SUITE.json."""
    if path.is_file():
        return path
    for run_dir in (path, path.parent):
        eval_dir = run_dir / "eval"
        if eval_dir.is_dir():
            names = [f"{suite}.json"] if suite else ["rob28.json", "rob224.json"]
            for name in names:
                if (eval_dir / name).is_file():
                    return eval_dir / name
    raise UserError(f"no evaluation found for {path}; run `dmlbench evaluate --checkpoint ...` first "
                    f"or pass the evaluation JSON file")


def load_records(paths, suite: str | None, protocol: str | None = None):
    """One record per result; with ``protocol``, every result must hold that protocol (a one-line UserError)."""
    from robustbench_dml.leaderboard import Record

    records = []
    for p in paths:
        source = find_result(Path(p), suite)
        try:
            data = json.loads(source.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{source} is not valid JSON ({e.msg}, line {e.lineno})") from None
        record = Record.from_evaluation(data, submitter="local", note=str(p))
        if protocol is not None and protocol not in record.protocols:
            raise UserError(f"{source} holds the {', '.join(record.protocols)} protocol only; compare with "
                            f"--protocol {next(iter(record.protocols))}, or re-evaluate without --robrank-compat")
        records.append(record)
    suites = sorted({r.suite_id for r in records})
    if len(suites) > 1:
        raise UserError(f"these results come from different suites ({', '.join(suites)}), whose numbers are not "
                        f"comparable; compare one suite at a time (--suite ID picks it in each run folder)")
    return records


def protocol_frame(records, protocol: str):
    """The records' rows of ``protocol``."""
    from robustbench_dml.leaderboard import records_to_frame

    frame = records_to_frame(records)
    return frame[frame["protocol"] == protocol].reset_index(drop=True)


def run(args) -> int:
    from robustbench_dml.leaderboard import frames_concat, reference_frame, render

    columns = parse_columns(args.columns)
    if args.reference and args.protocol != P.ROBRANK:
        raise UserError(f"the papers' rows were measured with RobRank's code: compare with them using "
                        f"--protocol {P.ROBRANK} --reference")
    records = load_records(args.results, args.suite, args.protocol)
    frame = protocol_frame(records, args.protocol)
    if args.reference:
        frame = frames_concat([frame, reference_frame(records[0].dataset)])
    emit(render(frame, args.format, columns=columns), args.output, args.overwrite)
    return 0
