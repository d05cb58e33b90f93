"""``dmlbench reproduce ROW``: rebuild a leaderboard row from its record's recipe and say whether it matches.

The row is found by its record id (or a unique prefix of at least 6 characters) among the package's official rows
and the local store's records. Its recipe (:mod:`robustbench_dml.leaderboard.recipes`) trains with the recorded
configuration and seed, evaluates with the recorded suite and settings, and the rebuilt record is compared with the
recorded one: the weights' sha256, then every raw result and score of every protocol. On the recorded torch
version, CPU kind and thread count the match is exact (exit 0); otherwise each difference is listed and ERS and
ARS are set against the recorded bootstrap intervals (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from robustbench_dml.cli.common import add_device, add_progress, progress_mode, show_progress
from robustbench_dml.cli.leaderboard import add_leaderboard_dir
from robustbench_dml.errors import UserError

MIN_PREFIX = 6


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="rebuild a leaderboard row from its recipe and compare",
                       description="Train and evaluate a row exactly as its record's recipe says, then compare the "
                                   "weights' sha256 and every score with the record (exit 0: identical).")
    p.add_argument("row", help="record id of the row (dmlbench leaderboard show --format csv lists them), or a "
                               f"unique prefix of at least {MIN_PREFIX} characters")
    p.add_argument("--out", help="new folder for the rebuilt run (default reproduce/RECORD_ID)")
    p.add_argument("--data-root", help="dataset folder (default: the recipe's)")
    add_leaderboard_dir(p)
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def find_record(row: str, leaderboard_dir: str):
    """The record whose id is ``row`` or starts with it, among the official rows and the local store's."""
    from robustbench_dml.leaderboard.official import official_records
    from robustbench_dml.leaderboard import LeaderboardStore

    if len(row) < MIN_PREFIX:
        raise UserError(f"give at least {MIN_PREFIX} characters of the record id (got {row!r})")
    found = {r.record_id: r for r in official_records() if r.record_id.startswith(row)}
    for record in LeaderboardStore(leaderboard_dir).all_records():  # validated and checked as publishing does
        if record.record_id.startswith(row):
            found.setdefault(record.record_id, record)
    if not found:
        raise UserError(f"no row {row!r} among the official rows or in {leaderboard_dir}; list them with "
                        "`dmlbench leaderboard show --dataset ID --format csv`")
    if len(found) > 1:
        raise UserError(f"{row!r} names {len(found)} rows ({', '.join(sorted(found))}); give more of the id")
    return next(iter(found.values()))


def compare(recorded, rebuilt) -> list[str]:
    """The differences between two records of the same row, one line each ([] when every value is identical)."""
    from robustbench_dml.leaderboard.records import SCORE_FIELDS

    lines = []
    if rebuilt.checkpoint_sha256 != recorded.checkpoint_sha256:
        lines.append(f"weights sha256: recorded {recorded.checkpoint_sha256[:16]}..., rebuilt "
                     f"{rebuilt.checkpoint_sha256[:16]}...")
    for protocol, old in recorded.protocols.items():
        new = rebuilt.protocols.get(protocol)
        if new is None:
            lines.append(f"{protocol}: not measured by the rebuild")
            continue
        for f in SCORE_FIELDS:
            a, b = getattr(old, f.name), getattr(new, f.name)
            if a == b:
                continue
            text = f"{protocol} {f.column}: recorded {_num(a)}, rebuilt {_num(b)}"
            lo, hi = getattr(old, f"{f.name}_lo", None), getattr(old, f"{f.name}_hi", None)
            if f.column in ("ERS", "ARS") and None not in (lo, hi, b):
                inside = lo <= b <= hi
                text += f" ({'inside' if inside else 'outside'} the recorded 95% interval [{lo:.1f}, {hi:.1f}])"
            lines.append(text)
    return lines


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}".rstrip("0").rstrip(".")


def run(args) -> int:
    from robustbench_dml.evaluation import evaluate
    from robustbench_dml.leaderboard.recipes import Recipe, data_sha256, environment
    from robustbench_dml.leaderboard.derive import record_from_result
    from robustbench_dml.training import train

    record = find_record(args.row, args.leaderboard_dir)
    if record.recipe is None:
        raise UserError(f"row {record.record_id} has no recipe (it was published without one, by `submit` or an "
                        "older version); it cannot be rebuilt")
    recipe = Recipe.from_json(record.recipe, where=f"row {record.record_id}'s recipe")
    out = Path(args.out or Path("reproduce") / record.record_id)
    if out.exists():
        raise UserError(f"{out} already exists; pass a new --out")
    cfg = recipe.train_config(args.data_root)
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise UserError(f"the recipe's data folder {cfg.data_root} is not on this machine; pass --data-root DIR "
                        f"(the folder holding the {cfg.dataset} files)")
    if recipe.data_sha256 and data_sha256(cfg.dataset, cfg.data_root) != dict(recipe.data_sha256):
        raise UserError(f"the {cfg.dataset} data in {cfg.data_root or 'the package'} is not the data this row was "
                        "trained and evaluated on (its sha256 differs); pass --data-root with the official files")
    for line in recipe.commands(str(out)):
        print(f"recipe: {line}")
    summary = train(cfg, out, progress=show_progress(args))
    result = evaluate(summary.checkpoint, recipe.eval_config(), device=args.device, state_dir=out / "state",
                      progress=progress_mode(args), data_root=cfg.data_root)
    result.to_json(out / "eval.json")
    rebuilt = record_from_result(result.to_dict(), submitter=record.submitter, created=record.created)
    here = environment()
    differences = compare(record, rebuilt)
    if not differences:
        print(f"reproduced {record.record_id}: the weights' sha256 and every score are identical")
        return 0
    print(f"not identical: {record.record_id} rebuilt in {out}")
    for line in differences:
        print(f"  {line}")
    changed = {k: (recipe.environment.get(k), v) for k, v in here.items() if recipe.environment.get(k) != v}
    if changed:
        print("  the environment differs, so bit-identical numbers are not expected: " + "; ".join(
            f"{k} recorded {'nothing' if a is None else repr(a)}, here {b!r}" for k, (a, b) in changed.items()))
    else:
        print("  same torch, Python, CPU kind and MKL mode as the record: a difference here is a defect, please "
              "report it with " + json.dumps({"row": record.record_id, "out": str(out)}))
    return 1
