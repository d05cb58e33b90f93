"""Versioned leaderboard store: append-only records -> numbered, immutable parquet versions with manifests.

Layout under ``root`` (the ``--leaderboard-dir``)::

    records/<dataset>/<board>/<record_id>.json      one per (checkpoint sha256, suite hash); never edited
    records/<dataset>/<board>/<record_id>.evidence.json.gz   its per-query results (:mod:`.evidence`)
    <dataset>/<board>/v<N>.parquet                   leaderboard version N (explicit pyarrow schema)
    <dataset>/<board>/v<N>.manifest.json             sha256 of the parquet and of every input record, rows, ...
    <dataset>/<board>/latest                         pointer: the number of the newest published version
    <dataset>/<board>/.lock                          inter-process lock (filelock)

``<board>`` is the suite version's leaderboard (:func:`~robustbench_dml.leaderboard.records.board_name`:
``rankaa28.v2``; a version 1 suite's, ``rob28``, the bare id), so the numbers of two versions of a suite never share
a board. The methods' ``suite`` argument is that name.

Publishing (``add_record``/``add_records``/``rebuild``) runs under the per-(dataset, suite) file lock: read the
pointer, write the new record files, derive the frame from *all* record files of the leaderboard, write the parquet
then the manifest (each to a temp name, fsync, ``os.replace``), and swap the pointer last. Concurrent writers are
serialised, so no row is lost or duplicated; a crash before the pointer swap leaves the previous version and pointer
intact (an unpublished ``v<N+1>`` file is invisible and is overwritten by the next writer). Versions are only ever
added, never edited. Loading checks the parquet against its manifest (sha256, schema, row count) and every record
file (and the evidence file it names) against the hashes the manifest holds: a damaged or changed file is a
:class:`UserError`, never a silently wrong table. Publishing goes further: every measured record is derived again
from its evidence (:mod:`robustbench_dml.leaderboard.evidence`), so a record with a raw value changed, or without
its per-query evidence, is never published.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from robustbench_dml import __version__
from robustbench_dml.errors import UserError
from robustbench_dml.files import atomic_write_bytes, read_bounded, sha256_file
from robustbench_dml.leaderboard.frames import (ARROW_SCHEMA, COLUMNS, READABLE_SCHEMAS, coerce_frame, empty_frame,
                                                records_to_table, sort_frame, upgrade_frame)
from robustbench_dml.leaderboard.derive import check_evidence
from robustbench_dml.leaderboard.evidence import SUFFIX
from robustbench_dml.leaderboard.records import (RAW_COLUMNS, RECORD_SCHEMA_VERSION, Record, read_record, safe_name,
                                                 write_record)

__all__ = ["LeaderboardStore", "MANIFEST_SCHEMA_VERSION", "build_reference_store", "frames_concat",
           "frame_to_parquet_bytes", "parquet_bytes_to_frame"]

if TYPE_CHECKING:  # pandas only where frames are read; publishing needs pyarrow alone
    import pandas as pd

MANIFEST_SCHEMA_VERSION = 1
_LOCK_TIMEOUT_S = 300.0


def frame_to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Serialise a leaderboard frame with the explicit :data:`ARROW_SCHEMA` (typed even when empty)."""
    df = coerce_frame(df)
    table = pa.Table.from_pandas(df, schema=ARROW_SCHEMA, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _types_mapper(t: pa.DataType) -> Any:
    import pandas as pd

    if t == pa.int64():
        return pd.Int64Dtype()
    if t == pa.string():
        return pd.StringDtype()
    return None


def parquet_bytes_to_frame(data: bytes, *, where: str = "leaderboard file") -> pd.DataFrame:
    """Parse and validate a leaderboard parquet (:data:`ARROW_SCHEMA`, or version 1's, read as the current one)."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserError(f"{where} is not a readable parquet file ({str(exc).splitlines()[0]}); it is damaged, "
                        "rebuild it with `dmlbench leaderboard rebuild --dataset ID` or restore it") from None
    if not any(table.schema.equals(schema, check_metadata=False) for schema in READABLE_SCHEMAS):
        raise UserError(f"{where} does not have the leaderboard schema (version 1 to {RECORD_SCHEMA_VERSION}); "
                        "it is damaged or from another robustbench_dml version")
    df = table.to_pandas(types_mapper=_types_mapper)
    return coerce_frame(upgrade_frame(df))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class LeaderboardStore:
    """Records and versioned leaderboards under one directory (see the module docstring for the layout).

    Every method that takes ``dataset`` and ``suite`` works on one leaderboard, e.g. ``("cub", "rob224")``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- paths -----------------------------------------------------------------------------------------------
    def board_dir(self, dataset: str, suite: str) -> Path:
        return self.root / safe_name(dataset, "dataset") / safe_name(suite, "suite")

    def records_dir(self, dataset: str, suite: str) -> Path:
        return self.root / "records" / safe_name(dataset, "dataset") / safe_name(suite, "suite")

    def evidence_path(self, record: Record) -> Path:
        return self.records_dir(record.dataset, record.board) / f"{record.record_id}{SUFFIX}"

    def record_path(self, record: Record) -> Path:
        return self.records_dir(record.dataset, record.board) / f"{record.record_id}.json"

    def parquet_path(self, dataset: str, suite: str, version: int) -> Path:
        return self.board_dir(dataset, suite) / f"v{int(version)}.parquet"

    def manifest_path(self, dataset: str, suite: str, version: int) -> Path:
        return self.board_dir(dataset, suite) / f"v{int(version)}.manifest.json"

    def _pointer_path(self, dataset: str, suite: str) -> Path:
        return self.board_dir(dataset, suite) / "latest"

    def _lock(self, dataset: str, suite: str) -> FileLock:
        d = self.board_dir(dataset, suite)
        d.mkdir(parents=True, exist_ok=True)
        return FileLock(str(d / ".lock"), timeout=_LOCK_TIMEOUT_S)

    # ---- reading ---------------------------------------------------------------------------------------------
    def latest_version(self, dataset: str, suite: str) -> int:
        """Number of the newest published version; 0 when the leaderboard has none yet."""
        path = self._pointer_path(dataset, suite)
        if not path.exists():
            present = self._present_versions(dataset, suite)
            if present:  # never let a lost pointer make the next publish reuse a published number
                raise UserError(f"leaderboard pointer {path} is missing but versions up to {present} exist; restore "
                                f"it with `echo {present} > {path}` (nothing was written)")
            return 0
        text = read_bounded(path, "pointer").decode("utf-8", errors="replace").strip()
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"leaderboard pointer {path} is damaged ({text[:20]!r}); write the newest good version "
                            "number into it or run `dmlbench leaderboard rebuild --dataset ID`")
        return int(text)

    def _present_versions(self, dataset: str, suite: str) -> int:
        """The highest version number with a manifest file on disk (0 if none)."""
        numbers = [int(m.group(1)) for p in self.board_dir(dataset, suite).glob("v*.manifest.json")
                   if (m := re.fullmatch(r"v(\d+)\.manifest\.json", p.name))]
        return max(numbers, default=0)

    def versions(self, dataset: str, suite: str) -> list[int]:
        """Published version numbers, oldest first (``[1, ..., latest]``)."""
        return list(range(1, self.latest_version(dataset, suite) + 1))

    def leaderboards(self) -> list[tuple[str, str]]:
        """All (dataset, suite) pairs that have at least one published version."""
        out = []
        if self.root.is_dir():
            for ptr in sorted(self.root.glob("*/*/latest")):
                if ptr.parent.parent.name != "records":
                    out.append((ptr.parent.parent.name, ptr.parent.name))
        return out

    def manifest(self, dataset: str, suite: str, version: int | None = None) -> dict[str, Any]:
        """The validated manifest of ``version`` (default latest)."""
        version = self._resolve(dataset, suite, version)
        path = self.manifest_path(dataset, suite, version)
        try:
            data = json.loads(read_bounded(path, "manifest"))
        except FileNotFoundError:
            raise UserError(f"leaderboard manifest {path} is missing; the leaderboard directory is damaged") from None
        except (UnicodeDecodeError, ValueError):
            raise UserError(f"leaderboard manifest {path} is damaged (not JSON); restore it or rebuild the "
                            "leaderboard with `dmlbench leaderboard rebuild --dataset ID`") from None
        required = {"schema_version", "dataset", "suite", "version", "parquet", "parquet_sha256", "rows", "records"}
        if not isinstance(data, dict) or not required <= set(data):
            raise UserError(f"leaderboard manifest {path} is damaged (missing fields)")
        if data["schema_version"] != MANIFEST_SCHEMA_VERSION:
            raise UserError(f"leaderboard manifest {path} has schema_version {data['schema_version']!r}, "
                            f"expected {MANIFEST_SCHEMA_VERSION}")
        if data["version"] != version or data["dataset"] != dataset or data["suite"] != suite:
            raise UserError(f"leaderboard manifest {path} describes another leaderboard or version; it is damaged")
        return data

    def _resolve(self, dataset: str, suite: str, version: int | None) -> int:
        latest = self.latest_version(dataset, suite)
        if version is None:
            if latest == 0:
                raise UserError(f"no leaderboard for dataset {dataset!r}, suite {suite!r} in {self.root}; "
                                "submit a checkpoint first")
            return latest
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= latest:
            have = f"versions 1..{latest}" if latest else "no versions"
            raise UserError(f"leaderboard {dataset}/{suite} has {have}, not version {version!r}")
        return version

    def load(self, dataset: str, suite: str, version: int | None = None, *, missing_ok: bool = True
             ) -> pd.DataFrame:
        """The leaderboard frame of ``version`` (default latest), validated against its manifest.

        With no published version yet, returns a typed empty frame (``missing_ok``) or raises UserError.
        """
        if version is None and missing_ok and self.latest_version(dataset, suite) == 0:
            return empty_frame()
        version = self._resolve(dataset, suite, version)
        manifest = self.manifest(dataset, suite, version)
        path = self.parquet_path(dataset, suite, version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"leaderboard file {path} is missing; the leaderboard directory is damaged") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest["parquet_sha256"]:
            raise UserError(f"leaderboard file {path} does not match its manifest (sha256 {digest[:12]}... != "
                            f"{str(manifest['parquet_sha256'])[:12]}...); it was changed or damaged, restore it "
                            "or rebuild with `dmlbench leaderboard rebuild --dataset ID`")
        df = parquet_bytes_to_frame(data, where=f"leaderboard file {path}")
        if len(df) != manifest["rows"] or sorted(set(df["record_id"].tolist())) != sorted(manifest["records"]):
            raise UserError(f"leaderboard file {path} has {len(df)} rows, its manifest lists {manifest['rows']}; "
                            "the leaderboard is damaged")
        self.check_published_records(dataset, suite, version)
        return df

    def records(self, dataset: str, suite: str) -> list[Record]:
        """All validated record files of one leaderboard, sorted by record id (a damaged file is a UserError)."""
        d = self.records_dir(dataset, suite)
        if not d.is_dir():
            return []
        out = []
        for path in sorted(d.glob("*.json")):
            rec = read_record(path)
            if rec.dataset != dataset or rec.board != suite:
                raise UserError(f"record file {path} belongs to {rec.dataset}/{rec.board}, not {dataset}/{suite}")
            _check_derived(rec, path)
            if not rec.reported:
                check_evidence(rec, self._evidence_bytes(rec), where=f"record file {path}")
            out.append(rec)
        return out

    def all_records(self, dataset: str | None = None) -> list[Record]:
        """The validated records of every leaderboard in the store (of ``dataset`` when given), as :meth:`records`
        reads them."""
        folders = sorted(p for p in (self.root / "records").glob("*/*") if p.is_dir())
        return [r for f in folders if dataset in (None, f.parent.name) for r in self.records(f.parent.name, f.name)]

    def verify(self, dataset: str, suite: str) -> list[int]:
        """Check every published version (parquet, manifest, the hashes of its records and their evidence); returns
        the versions."""
        versions = self.versions(dataset, suite)
        for v in versions:
            self.load(dataset, suite, v)
        return versions

    def _evidence_bytes(self, record: Record) -> bytes | None:
        path = self.evidence_path(record)
        try:
            return read_bounded(path, "evidence")
        except FileNotFoundError:
            return None

    def check_published_records(self, dataset: str, suite: str, version: int) -> None:
        """Every record listed in ``version``'s manifest still exists with the sha256 recorded there, and so does
        the evidence file it names."""
        rdir = self.records_dir(dataset, suite)
        for rid, digest in self.manifest(dataset, suite, version)["records"].items():
            path = rdir / f"{rid}.json"
            if not path.exists() or sha256_file(path) != digest:
                raise UserError(f"record file {path} does not match the manifest of version {version}; it was "
                                "changed, deleted or damaged after publication (restore it; nothing was published)")
            record = read_record(path)
            evidence = self.evidence_path(record)
            if record.evidence_sha256 is not None and (not evidence.exists() or
                                                        sha256_file(evidence) != record.evidence_sha256):
                raise UserError(f"evidence file {evidence} does not have the sha256 its record names; it was "
                                "changed, deleted or damaged after publication (restore it)")

    def diff(self, dataset: str, suite: str, a: int, b: int) -> pd.DataFrame:
        """Rows (record and protocol) added, removed or changed from version ``a`` to version ``b``.

        Returns a typed frame with a leading ``change`` column (``added`` / ``removed`` / ``changed``) followed by
        the leaderboard columns (the row as in ``b``; as in ``a`` for removed rows), in leaderboard order.
        """
        import pandas as pd

        fa = self.load(dataset, suite, a, missing_ok=False)
        fb = self.load(dataset, suite, b, missing_ok=False)
        ia = fa.set_index(["record_id", "protocol"], drop=False)
        ib = fb.set_index(["record_id", "protocol"], drop=False)
        added = [r for r in ib.index if r not in ia.index]
        removed = [r for r in ia.index if r not in ib.index]
        changed = []
        for r in ib.index:
            if r in ia.index:
                ra, rb = ia.loc[r], ib.loc[r]
                if not all(_same(ra[c], rb[c]) for c in COLUMNS):
                    changed.append(r)
        parts = []
        for kind, frame, ids in (("added", ib, added), ("removed", ia, removed), ("changed", ib, changed)):
            if ids:
                part = frame.loc[ids].reset_index(drop=True)
                part.insert(0, "change", pd.Series([kind] * len(part), dtype=pd.StringDtype()))
                parts.append(part)
        if not parts:
            out = empty_frame()
            out.insert(0, "change", pd.Series([], dtype=pd.StringDtype()))
            return out
        out = pd.concat(parts, ignore_index=True)
        return out

    # ---- writing ---------------------------------------------------------------------------------------------
    def check_writable(self, dataset: str, suite: str) -> None:
        """Before spending compute on a result for this leaderboard: its folders can be created and a file
        written there (a read-only or full store is a one-line UserError). Leaves nothing behind: the folders
        it had to create are removed again."""
        created: list[Path] = []
        try:
            for d in (self.board_dir(dataset, suite), self.records_dir(dataset, suite)):
                missing = [p for p in [d, *d.parents] if not p.exists()]
                for p in reversed(missing):
                    try:
                        p.mkdir()
                    except FileExistsError:  # another process made it meanwhile: not ours to remove
                        continue
                    created.append(p)
                with tempfile.TemporaryFile(dir=d) as fh:
                    fh.write(b"0" * 4096)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as e:
            raise UserError(f"leaderboard directory {self.root} is not writable ({e.strerror or e}); choose "
                            "another --leaderboard-dir (nothing was evaluated)") from None
        finally:
            for p in reversed(created):
                try:
                    p.rmdir()
                except OSError:
                    pass

    def add_record(self, record: Record, *, allow_ineligible: bool = False) -> tuple[int, bool]:
        """Record ``record`` and publish a new leaderboard version.

        Returns ``(version, added)``: the latest version number afterwards, and whether a new version was made.
        Resubmitting the same checkpoint under the same suite (same ``record_id``) adds nothing and keeps the
        first record (records are append-only). Ineligible results (a published suite with overrides) are refused
        unless ``allow_ineligible``. Safe to call from several processes at once.
        """
        version, n_added = self.add_records([record], allow_ineligible=allow_ineligible)
        return version, n_added > 0

    def add_records(self, records: Sequence[Record], *, allow_ineligible: bool = False) -> tuple[int, int]:
        """Add several records of one (dataset, suite) and publish at most one new version.

        Returns ``(latest version, number of records newly added)``.
        """
        records = list(records)
        if not records:
            raise UserError("no records to add")
        keys = {(r.dataset, r.board) for r in records}
        if len(keys) != 1:
            raise UserError(f"records of one call must share dataset and suite, got {sorted(keys)}")
        dataset, suite = keys.pop()
        for r in records:
            _check_publishable(r, allow_ineligible)
        with self._lock(dataset, suite):
            latest = self.latest_version(dataset, suite)
            published = set(self.manifest(dataset, suite)["records"]) if latest else set()
            new = []
            for r in records:
                path = self.record_path(r)
                if path.exists():
                    read_record(path)  # a damaged existing record is an error, never silently kept
                else:  # the evidence first: a record file never names evidence that is not there
                    if r.evidence is not None:
                        atomic_write_bytes(self.evidence_path(r), r.evidence)
                    write_record(r, path)
                if r.record_id not in published and r.record_id not in {x.record_id for x in new}:
                    new.append(r)
            if not new:
                return latest, 0
            version = self._publish(dataset, suite, latest)
            return version, len(new)

    def rebuild(self, dataset: str, suite: str) -> int:
        """Publish a new version derived from the record files as they are (e.g. after a damaged version)."""
        if not self.records(dataset, suite):
            raise UserError(f"no records for {dataset}/{suite} under {self.root}; nothing to build")
        with self._lock(dataset, suite):
            return self._publish(dataset, suite, self.latest_version(dataset, suite))

    def _publish(self, dataset: str, suite: str, latest: int) -> int:
        """Derive version ``latest + 1`` from all record files; caller holds the lock.

        Refuses (nothing written) when a record already published no longer matches the sha256 its manifest
        holds, or when any record's stored ERS/ARS differ from those re-derived from its raw results."""
        self._remove_orphans(dataset, suite)
        if latest:
            self.check_published_records(dataset, suite, latest)
        records = self.records(dataset, suite)
        version = latest + 1
        table = records_to_table(records)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "record_schema_version": RECORD_SCHEMA_VERSION,
            "dataset": dataset,
            "suite": suite,
            "version": version,
            "previous": latest or None,
            "parquet": f"v{version}.parquet",
            "parquet_sha256": hashlib.sha256(data).hexdigest(),
            "rows": table.num_rows,
            "records": {r.record_id: sha256_file(self.record_path(r)) for r in records},
            "package_version": __version__,
            "created": _now(),
        }
        atomic_write_bytes(self.parquet_path(dataset, suite, version), data)
        atomic_write_bytes(self.manifest_path(dataset, suite, version),
                           (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        atomic_write_bytes(self._pointer_path(dataset, suite), f"{version}\n".encode())
        return version


    _ORPHAN = re.compile(r"^\.(latest|v\d+\.parquet|v\d+\.manifest\.json|[0-9a-f]{16}-[0-9a-f]{12}\.json"
                         r"|[0-9a-f]{16}-[0-9a-f]{12}\.evidence\.json\.gz)"
                         r"\.[A-Za-z0-9_]+\.tmp$")

    def _remove_orphans(self, dataset: str, suite: str) -> None:
        """Remove temp files our own atomic writes left behind when a writer was killed (caller holds the lock,
        so no writer is active; only names of the form ``.<our file>.<random>.tmp`` are touched)."""
        for d in (self.board_dir(dataset, suite), self.records_dir(dataset, suite)):
            if d.is_dir():
                for p in d.iterdir():
                    if p.is_file() and self._ORPHAN.match(p.name):
                        p.unlink(missing_ok=True)


def _check_derived(record: Record, path: Path) -> None:
    """A stored record's scores must be what its raw results give (scores are never trusted from a file); a
    record marked as a paper's row (``reported``) must be exactly one of the rows shipped in code
    (:mod:`.reference`), whose scores are the papers' printed numbers."""
    from robustbench_dml import scoring
    from robustbench_dml.leaderboard.reference import reference_records

    if record.reported:
        if record not in reference_records(record.dataset):
            raise UserError(f"record file {path} claims to be a published row (reported=true) but is not one of "
                            "the papers' rows; remove that file")
        return
    for protocol, block in record.protocols.items():
        raw = block.raw()
        for name, stored in (("ERS", block.ers), ("ARS", block.ars)):
            try:
                derived = scoring.score(raw, name)
            except ValueError:
                derived = None
            if (stored is None) != (derived is None) or (stored is not None and abs(stored - derived) > 1e-6):
                raise UserError(f"record file {path}: stored {protocol} {name} {stored} is not what its raw results "
                                f"give ({derived if derived is None else round(derived, 6)}); the file was edited, "
                                "restore it")


def _same(x: Any, y: Any) -> bool:
    import pandas as pd

    if pd.isna(x) and pd.isna(y):
        return True
    if pd.isna(x) or pd.isna(y):
        return False
    return bool(x == y)


def _check_publishable(record: Record, allow_ineligible: bool) -> None:
    if not isinstance(record, Record):
        raise UserError(f"expected a Record, got {type(record).__name__}")
    if record.reported:
        return
    if record.evidence is None or record.evidence_sha256 is None:
        raise UserError(f"record {record.record_id} carries no per-query evidence, so it cannot be published; build "
                        "it from its evaluation result (`dmlbench submit RESULT`)")
    if allow_ineligible:
        return
    if not record.eligible:
        raise UserError(f"result {record.record_id} is not eligible for a leaderboard (the suite was overridden "
                        "with --eps, --attacks or --max-queries); re-run `dmlbench evaluate` without overrides")
    for protocol, block in record.protocols.items():
        missing = [c for c in RAW_COLUMNS + ("R@1",) if c not in block.raw()]
        if missing or block.ers is None or block.ars is None:
            raise UserError(f"result {record.record_id} lacks {', '.join(missing) or 'ERS/ARS'} ({protocol} "
                            "protocol); a leaderboard row needs the full suite, re-run `dmlbench evaluate`")


def frames_concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate leaderboard frames (e.g. user rows and the reference rows) keeping dtypes and order."""
    import pandas as pd

    frames = [coerce_frame(f) for f in frames if len(f)]
    if not frames:
        return empty_frame()
    return sort_frame(coerce_frame(pd.concat(frames, ignore_index=True)))


def build_reference_store(root: str | Path) -> list[tuple[str, int]]:
    """Write the reference leaderboards (``<root>/<dataset>/reference/v<N>.parquet`` + records) with the store.

    Idempotent: rows already present add nothing. Returns ``[(dataset, latest version), ...]``.
    """
    from robustbench_dml.leaderboard.reference import REFERENCE_ROWS, reference_records

    store = LeaderboardStore(root)
    out = []
    for ds in sorted({r["dataset"] for r in REFERENCE_ROWS}):
        version, _ = store.add_records(reference_records(ds))
        out.append((ds, version))
    return out
