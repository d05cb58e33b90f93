"""``dmlbench submit``: validate an untrusted checkpoint, evaluate it with a published suite, record, publish.

Every refusal is one line and a non-zero exit, and leaves the leaderboard untouched: the checkpoint is
validated (safetensors + meta.json, known backbone and dataset, weight shapes, no pickles) and fully evaluated
before anything is written to the store, and the store's writes are atomic.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from robustbench_dml.cli.common import add_device, add_progress, progress_mode
from robustbench_dml.cli.leaderboard import add_leaderboard_dir
from robustbench_dml.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("submit", help="score a checkpoint and add it to a leaderboard")
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + meta.json)")
    p.add_argument("--suite", help="published suite (default: the dataset's)")
    p.add_argument("--name", help="submitter name shown on the leaderboard (default: your user name)")
    p.add_argument("--data-root", help="folder holding the checkpoint's dataset")
    p.add_argument("--eval-seed", "--seed", type=int, default=0, help="seed of the attacks' random selections")
    add_leaderboard_dir(p)
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def validate(checkpoint: Path) -> dict:
    """Everything that can be checked before spending time on attacks; raises UserError."""
    from robustbench_dml import datasets
    from robustbench_dml.checkpoint import load_checkpoint

    _model, meta = load_checkpoint(checkpoint)  # layout, pickles, sha256, backbone, shapes
    if meta["dataset"] not in datasets.DATASETS:
        raise UserError(f"{checkpoint}/meta.json names unknown dataset {meta['dataset']!r}; "
                        f"known: {', '.join(datasets.list_datasets())}")
    return meta


def publish(result, *, leaderboard_dir: str, name: str | None, partial_ok: bool = False, recipe=None):
    """:meth:`EvaluationResult.publish <robustbench_dml.results.EvaluationResult.publish>`: (record, version,
    added)."""
    return result.publish(leaderboard_dir, name=name, partial_ok=partial_ok, recipe=recipe)


def show_board(record, version: int, added: bool, leaderboard_dir: str) -> None:
    """The leaderboard in the record's shown protocol (the papers' rows only beside ``robrank`` numbers), then the
    record's scores under every protocol it holds."""
    from robustbench_dml.cli.leaderboard import board_with_reference, with_base_ars
    from robustbench_dml.leaderboard import LeaderboardStore, render

    store = LeaderboardStore(leaderboard_dir)
    frame = board_with_reference(store, record.dataset, record.board, version, True, record.protocol)
    frame, columns = with_base_ars(store, record.dataset, record.board, frame)  # a strong suite's: rob28's ARS beside
    print(render(frame, "md", highlight_record_id=record.record_id, columns=columns), end="")
    state = "added to" if added else "already on (no new version)"
    from robustbench_dml.cli.report import _num  # "-" for a score a partial suite does not give

    scores = "; ".join(f"{p}: ERS {_num(s.ers, 1)}, ARS {_num(s.ars, 1)}" for p, s in record.protocols.items())
    print(f"{record.record_id} ({scores}) {state} {leaderboard_dir}/{record.dataset}/{record.board} v{version}")


def run(args) -> int:
    from robustbench_dml import datasets
    from robustbench_dml.evaluation import EvalConfig, evaluate

    from robustbench_dml.leaderboard.records import check_submitter

    checkpoint = Path(args.checkpoint)
    if args.name is not None:
        check_submitter(args.name)
    meta = validate(checkpoint)
    suite = args.suite or datasets.info(meta["dataset"]).suite
    from attacks.suites import get_suite

    board = get_suite(suite).board  # an unknown suite is a one-line UserError naming the known ones
    from robustbench_dml.leaderboard import LeaderboardStore

    LeaderboardStore(args.leaderboard_dir).check_writable(meta["dataset"], board)
    with tempfile.TemporaryDirectory(prefix="dmlbench-submit-") as state:
        result = evaluate(checkpoint, EvalConfig(suite, seed=args.eval_seed), device=args.device, state_dir=state,
                          progress=progress_mode(args), data_root=args.data_root)
    record, version, added = publish(result, leaderboard_dir=args.leaderboard_dir, name=args.name)
    show_board(record, version, added, args.leaderboard_dir)
    return 0
