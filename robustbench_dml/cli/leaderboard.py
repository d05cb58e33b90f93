"""``dmlbench leaderboard show|export|diff|rebuild``: read the versioned leaderboards (and the papers' rows);
``rebuild`` publishes a new version derived from the record files (after a damaged version)."""

from __future__ import annotations

import sys
from pathlib import Path

from robustbench_dml import protocols as P
from robustbench_dml.cli.common import check_output
from robustbench_dml.errors import UserError

DEFAULT_DIR = "leaderboards"
FORMATS = ("md", "csv", "latex", "html")


def add_protocol(p) -> None:
    p.add_argument("--protocol", choices=P.PROTOCOLS, default=P.DEFAULT,
                   help=f"measurement protocol to show (default {P.DEFAULT}: the reference's quirks fixed; "
                        f"{P.ROBRANK}: as the papers measured, shown beside their published rows)")


def add_columns(p) -> None:
    p.add_argument("--columns", help="comma-separated metric columns (default: the papers' layout), e.g. "
                                     "R@1,ERS,ARS,WC:candidate,WC:query,WC:recall for the per-threat worst cases, "
                                     "ERS,ERS_lo,ERS_hi for the 95%% bootstrap interval")


def parse_columns(text: str | None):
    """``--columns`` as a tuple of leaderboard metric columns (None: the default layout); unknown ones refused."""
    from robustbench_dml.leaderboard.records import BENIGN_COLUMNS, RAW_COLUMNS, SCORE_COLUMNS

    if text is None:
        return None
    known = BENIGN_COLUMNS + RAW_COLUMNS + SCORE_COLUMNS
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in columns if c not in known]
    if unknown or not columns:
        raise UserError(f"unknown column(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return columns


def add_leaderboard_dir(p) -> None:
    p.add_argument("--leaderboard-dir", default=DEFAULT_DIR, help=f"leaderboard store (default ./{DEFAULT_DIR})")


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="show, export or diff a leaderboard version",
                       description="Leaderboards are derived from append-only records as numbered, immutable "
                                   "versions (leaderboards/DATASET/SUITE/vN.parquet + manifest).")
    p.add_argument("action", choices=("show", "export", "diff", "rebuild", "site"),
                   help="site: write the static HTML site of every board (official, the store's, the papers') to "
                        "--output DIR")
    p.add_argument("--dataset", help="dataset id (dmlbench list datasets); every action but site needs it")
    p.add_argument("--suite", help="suite id (default: the dataset's); a bare id is its current version's board, "
                                   "id.vN an earlier version's (dmlbench list suites)")
    p.add_argument("--version", help="N (default: latest), or A..B for diff")
    p.add_argument("--format", choices=FORMATS, help="md (default for show), csv, latex or html")
    p.add_argument("--output", help="write to this new file instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--no-reference", action="store_true",
                   help="leave out the rows published by the papers (shown with --protocol robrank only)")
    p.add_argument("--no-official", action="store_true",
                   help="leave out the official rows shipped with the package (shown beside the store's, marked)")
    add_protocol(p)
    add_columns(p)
    add_leaderboard_dir(p)
    p.set_defaults(func=run)


def board_with_reference(store, dataset: str, suite: str, version: int | None, reference: bool,
                         protocol: str = P.DEFAULT, official: bool = True):
    """The leaderboard's rows of ``protocol``, with the package's official rows of the board when ``official``
    (:mod:`robustbench_dml.leaderboard.official`; never written to the store) and the papers' rows when
    ``reference`` and the protocol is theirs (``robrank``): published rows are never placed beside numbers of
    another protocol."""
    from robustbench_dml.leaderboard import frames_concat, reference_frame
    from robustbench_dml.leaderboard.official import official_frame

    frame = store.load(dataset, suite, version)
    if official:
        frame = frames_concat([frame, official_frame(dataset, suite)])
    frame = frame[frame["protocol"] == protocol].reset_index(drop=True)
    if reference and protocol == P.ROBRANK:
        ref = reference_frame(dataset)
        if len(ref):
            frame = frames_concat([frame, ref])
    return frame


def emit(text: str, output: str | None, overwrite: bool = False, inputs: tuple = ()) -> None:
    if output:
        from robustbench_dml.files import atomic_write_text

        check_output(output, overwrite, inputs)
        path = Path(output)
        atomic_write_text(path, text)
        print(path)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


def run(args) -> int:
    from attacks.suites import board_of
    from robustbench_dml import datasets
    from robustbench_dml.leaderboard import LeaderboardStore, render

    if args.action == "site":
        return site(args)
    if args.dataset is None:
        raise UserError(f"leaderboard {args.action} needs --dataset (dmlbench list datasets)")
    suite = args.suite or datasets.info(args.dataset).suite if args.dataset in datasets.DATASETS else args.suite
    if suite is None:
        raise UserError(f"unknown dataset {args.dataset!r}; pass --suite as well for a custom one")
    store = LeaderboardStore(args.leaderboard_dir)
    check_output(args.output, args.overwrite)
    columns = parse_columns(args.columns)
    fallback = None
    if args.suite is None and args.action in ("show", "export"):
        suite, fallback = _headline(store, args, suite)
    suite = board_of(suite)  # the suite version's leaderboard
    if args.action == "rebuild":
        version = store.rebuild(args.dataset, suite)
        print(f"{args.leaderboard_dir}/{args.dataset}/{suite} v{version}")
        return 0
    fmt = args.format or ("csv" if args.action == "diff" else "md")
    if args.action == "diff":
        if not args.version or ".." not in args.version:
            raise UserError("diff needs --version A..B (two version numbers)")
        a, b = (_int(v) for v in args.version.split("..", 1))
        diff = store.diff(args.dataset, suite, a, b)
        diff = diff[diff["protocol"] == args.protocol].reset_index(drop=True)
        emit(diff.to_csv(index=False) if fmt == "csv" else render(diff, fmt, columns=columns), args.output,
             args.overwrite)
        return 0
    version = _int(args.version) if args.version else None
    official = not args.no_official
    frame = board_with_reference(store, args.dataset, suite, version, not args.no_reference, args.protocol, official)
    if not len(frame):
        flip = P.ROBRANK if args.protocol == P.CORRECTED else P.CORRECTED
        if len(board_with_reference(store, args.dataset, suite, version, not args.no_reference, flip, official)):
            hint = f"; its rows (or the papers') hold the {flip} protocol: add --protocol {flip}"
        else:
            hint = "; add one with `dmlbench run` or `dmlbench submit`"
        raise UserError(f"no {args.protocol} rows for {args.dataset}/{suite} in {args.leaderboard_dir} yet{hint}")
    title = f"{args.dataset} / {suite}" + (f" v{version}" if version else "")
    frame, columns = with_base_ars(store, args.dataset, suite, frame, columns, official)
    standalone = args.action == "export" and fmt == "latex"
    emit(render(frame, fmt, title=title, standalone=standalone, columns=columns), args.output, args.overwrite)
    notes = [fallback] if fallback else []
    if args.protocol != P.ROBRANK and not args.no_reference and len(_reference(args.dataset)):
        notes.append(f"note: the papers' rows were measured with RobRank's code; see them beside yours with "
                     f"--protocol {P.ROBRANK}")
    for note in notes:  # after the table, so that a failed write is the only line on stderr
        print(note, file=sys.stderr)
    return 0


def _headline(store, args, published: str) -> tuple[str, str | None]:
    """The suite a board shows without ``--suite``: the dataset's strong suite (:data:`attacks.suites.STRONG`, as
    RobustBench ranks by AutoAttack) where its board has rows of the protocol asked for and of every defense the
    published suite's board has (a strong board of a few defenses would hide the others), else the published one
    and a note naming the strong suite (None where there is nothing to say)."""
    from attacks.suites import STRONG, board_of

    strong = STRONG.get(published)
    if strong is None:
        return published, None
    def board(suite: str):
        return board_with_reference(store, args.dataset, board_of(suite), None, False, args.protocol,
                                    not args.no_official)

    rows = board(strong)
    corrected = args.protocol == P.CORRECTED  # the strong suites measure the corrected protocol only
    if not len(rows):  # the published board is read only where the strong one has rows to compare
        return published, (f"note: no {strong} rows for {args.dataset} yet (the strong suite, which boards rank by "
                           f"where it has rows of every defense); this is {published}") if corrected else None
    missing = sorted(set(board(published)["defense"]) - set(rows["defense"]))
    if not missing:
        return strong, None
    return published, (f"note: {strong} has no rows of {', '.join(missing)} for {args.dataset} yet, so boards rank "
                       f"by {published} here; --suite {strong} shows the defenses it has") if corrected else None


def with_base_ars(store, dataset: str, board: str, frame, columns=None, official: bool = True):
    """A strong suite's table with each row's ARS under the published suite it strengthens beside it (the same
    weights, by checkpoint sha256, corrected protocol; empty where that suite has no row of them): how much the
    strong suite takes away, and the number the papers' tables compare with. Other suites' tables unchanged."""
    from attacks.suites import base_of
    from robustbench_dml.leaderboard.tables import TABLE_COLUMNS

    base = base_of(board)
    if not base:
        return frame, columns
    pub = board_with_reference(store, dataset, base, None, False, P.CORRECTED, official)
    ars = {sha: a for sha, a in zip(pub["checkpoint_sha256"], pub["ARS"]) if isinstance(sha, str)}
    name = f"ARS {base}"
    frame = frame.copy()
    frame[name] = [ars.get(sha) if isinstance(sha, str) else None for sha in frame["checkpoint_sha256"]]
    frame[name] = frame[name].astype("float64")
    return frame, (*(columns or TABLE_COLUMNS), name)


def site(args) -> int:
    """``leaderboard site --output DIR``: the official rows, every board of the store and the papers' rows."""
    from robustbench_dml.leaderboard import LeaderboardStore, reference_records
    from robustbench_dml.leaderboard.official import official_histories, official_records
    from robustbench_dml.leaderboard.site import write_site

    if not args.output:
        raise UserError("leaderboard site needs --output DIR (a new or empty folder)")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise UserError(f"{out} exists and is not an empty folder; choose a new one or pass --overwrite")
    store = LeaderboardStore(args.leaderboard_dir)
    records = [r for r in official_records() if args.dataset in (None, r.dataset)]
    records += store.all_records(args.dataset)
    records += [r for r in reference_records() if args.dataset in (None, r.dataset)]
    pages = write_site(out, records, official_histories(args.dataset))
    print(f"{out / 'index.html'} ({len(pages)} files)")
    return 0


def _reference(dataset: str):
    from robustbench_dml.leaderboard import reference_frame

    return reference_frame(dataset)


def _int(text: str) -> int:
    try:
        return int(text.lstrip("v"))
    except ValueError:
        raise UserError(f"version must be a number like 3 (got {text!r})") from None
