"""``dmlbench compare``: the papers' comparison table for runs, checkpoints or evaluation JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from robustbench_dml.cli.leaderboard import FORMATS, emit
from robustbench_dml.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare evaluated runs in the papers' table layout",
                       description="Each argument is a run directory, a checkpoint directory or an evaluation "
                                   "JSON file; run `dmlbench evaluate` first. Best value per column is bold; "
                                   "ERS/ARS ties within the bootstrap interval are shown as ties.")
    p.add_argument("results", nargs="+", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--suite", help="which evaluation to use when a run has several (default: the dataset's)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--output")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--reference", action="store_true", help="add the papers' published rows for the dataset")
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


def load_records(paths, suite: str | None):
    from robustbench_dml.leaderboard import Record

    records = []
    for p in paths:
        source = find_result(Path(p), suite)
        try:
            data = json.loads(source.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{source} is not valid JSON ({e.msg}, line {e.lineno})") from None
        records.append(Record.from_evaluation(data, submitter="local", note=str(p)))
    return records


def run(args) -> int:
    from robustbench_dml.leaderboard import frames_concat, records_to_frame, reference_frame, render

    records = load_records(args.results, args.suite)
    frame = records_to_frame(records)
    if args.reference:
        frame = frames_concat([frame, reference_frame(records[0].dataset)])
    emit(render(frame, args.format), args.output, args.overwrite)
    return 0
