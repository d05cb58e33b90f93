"""The typed, append-only result record: one per (checkpoint sha256, suite hash), and the leaderboard frame schema.

A :class:`Record` holds the benign metrics, every raw attack result (units of ``docs/protocol.md``), ERS, ARS, their
bootstrap confidence intervals, the worst case, and the provenance (dataset, backbone, defense and configuration,
seed, device, versions, suite id/version/hash, submitter, date). Rows published by papers are records too, with
``reported=True`` and a ``source`` citation (no checkpoint; values the paper does not give are ``None``).

On disk a record is one JSON file (``<root>/records/<dataset>/<suite_id>/<record_id>.json``) written atomically
and never edited. Loading validates schema version, fields, types and finiteness; a damaged file is a
:class:`~robustbench_dml.errors.UserError` naming the file.

The leaderboard frame (:data:`COLUMNS`, :data:`DTYPES`, :data:`ARROW_SCHEMA`) uses the papers' column names
(``R@1``, ``CA+``, ``ES:R``, ...) and explicit dtypes: ``string`` for text, nullable ``Int64`` for integers,
``float64`` (NaN = not measured / not published) and ``bool``. Nothing is left to pandas' inference, so an empty
frame is typed and pandas 3's ``str`` inference never leaks in.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from robustbench_dml import scoring
from robustbench_dml.errors import UserError

if TYPE_CHECKING:  # pandas is imported where frames are built, so writers need only pyarrow
    import pandas as pd

__all__ = ["RECORD_SCHEMA_VERSION", "Record", "FIELDS", "COLUMNS", "DTYPES", "ARROW_SCHEMA", "BENIGN_COLUMNS",
           "RAW_COLUMNS", "SCORE_COLUMNS", "make_record_id", "records_to_frame", "records_to_table", "sort_records",
           "sort_frame", "empty_frame", "coerce_frame", "write_record", "read_record", "atomic_write_bytes",
           "sha256_file", "safe_name"]

RECORD_SCHEMA_VERSION = 1

BENIGN_COLUMNS = ("R@1", "R@2", "mAP", "MAP@R", "mAP@10", "NMI")
RAW_COLUMNS = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")
SCORE_COLUMNS = ("ERS", "ARS", "ERS_lo", "ERS_hi", "ARS_lo", "ARS_hi", "worst_case")


@dataclass(frozen=True)
class Field:
    name: str       # dataclass attribute / JSON key
    column: str     # leaderboard column (papers' names)
    kind: str       # "str" | "int" | "float" | "bool"
    nullable: bool


def _f(name: str, column: str | None, kind: str, nullable: bool = False) -> Field:
    return Field(name, column or name, kind, nullable)


_METRIC_FIELD_NAMES = {
    "R@1": "r1", "R@2": "r2", "mAP": "map", "MAP@R": "map_at_r", "mAP@10": "map_at_10", "NMI": "nmi",
    "CA+": "ca_plus", "CA-": "ca_minus", "QA+": "qa_plus", "QA-": "qa_minus", "TMA": "tma", "ES:D": "es_d",
    "ES:R": "es_r", "LTM": "ltm", "GTM": "gtm", "GTT": "gtt",
    "ERS": "ers", "ARS": "ars", "ERS_lo": "ers_lo", "ERS_hi": "ers_hi", "ARS_lo": "ars_lo", "ARS_hi": "ars_hi",
    "worst_case": "worst_case",
}

#: every field of a record, in the leaderboard's column order
FIELDS: tuple[Field, ...] = (
    _f("record_id", None, "str"),
    _f("dataset", None, "str"),
    _f("suite_id", None, "str"),
    _f("suite_version", None, "int", True),
    _f("defense", None, "str"),
    _f("backbone", None, "str"),
    _f("steps", None, "int", True),
    *(_f(_METRIC_FIELD_NAMES[c], c, "float", True) for c in BENIGN_COLUMNS + RAW_COLUMNS + SCORE_COLUMNS),
    _f("eligible", None, "bool"),
    _f("reported", None, "bool"),
    _f("submitter", None, "str"),
    _f("source", None, "str", True),
    _f("created", None, "str"),
    _f("seed", None, "int", True),
    _f("device", None, "str", True),
    _f("num_queries", None, "int", True),
    _f("robrank_compat", None, "bool"),
    _f("checkpoint_sha256", None, "str", True),
    _f("suite_hash", None, "str", True),
    _f("defense_config", None, "str"),
    _f("versions", None, "str"),
    _f("note", None, "str", True),
    _f("schema_version", None, "int"),
)
_BY_NAME = {f.name: f for f in FIELDS}
COLUMNS: tuple[str, ...] = tuple(f.column for f in FIELDS)
COLUMN_TO_FIELD = {f.column: f.name for f in FIELDS}

# dtype names (equal to the dtype objects pandas reports): "string" is pd.StringDtype() with pd.NA as missing
_PD_DTYPE = {"str": "string", "int": "Int64", "float": "float64", "bool": "bool"}
_PA_TYPE = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
#: pandas dtype of every leaderboard column
DTYPES: dict[str, str] = {f.column: _PD_DTYPE[f.kind] for f in FIELDS}
#: pyarrow schema of every leaderboard parquet file
ARROW_SCHEMA = pa.schema([pa.field(f.column, _PA_TYPE[f.kind], nullable=f.nullable) for f in FIELDS],
                         metadata={b"robustbench_dml.schema_version": str(RECORD_SCHEMA_VERSION).encode()})

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def safe_name(value: str, what: str) -> str:
    """A dataset or suite id usable as a directory name (letters, digits, ``_ . + -``)."""
    if not isinstance(value, str) or not _SAFE.match(value) or value in ("records",):
        raise UserError(f"invalid {what} {value!r}: use letters, digits and _ . + - (at most 64 characters)")
    return value


def make_record_id(checkpoint_sha256: str, suite_hash: str) -> str:
    """``<sha256[:16]>-<suite_hash[:12]>``: one record per (checkpoint, suite)."""
    return f"{checkpoint_sha256[:16]}-{suite_hash[:12]}"


def _json_str(obj: Any) -> str:
    return json.dumps(obj if obj is not None else {}, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Record:
    """One leaderboard row. Metric fields are floats in the units of ``docs/protocol.md`` or ``None`` (not measured)."""

    record_id: str
    dataset: str
    suite_id: str
    suite_version: int | None
    defense: str
    backbone: str
    steps: int | None
    r1: float | None
    r2: float | None
    map: float | None
    map_at_r: float | None
    map_at_10: float | None
    nmi: float | None
    ca_plus: float | None
    ca_minus: float | None
    qa_plus: float | None
    qa_minus: float | None
    tma: float | None
    es_d: float | None
    es_r: float | None
    ltm: float | None
    gtm: float | None
    gtt: float | None
    ers: float | None
    ars: float | None
    ers_lo: float | None
    ers_hi: float | None
    ars_lo: float | None
    ars_hi: float | None
    worst_case: float | None
    eligible: bool
    reported: bool
    submitter: str
    source: str | None
    created: str
    seed: int | None
    device: str | None
    num_queries: int | None
    robrank_compat: bool
    checkpoint_sha256: str | None
    suite_hash: str | None
    defense_config: str
    versions: str
    note: str | None = None
    schema_version: int = RECORD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        _validate_fields(dataclasses.asdict(self), where="record")

    # ---- views -------------------------------------------------------------------------------------------
    def raw(self) -> dict[str, float]:
        """The raw attack results plus benign ``R@1`` that are present (the input of ``scoring.ers/ars``)."""
        out = {}
        for c in RAW_COLUMNS + ("R@1",):
            v = getattr(self, _METRIC_FIELD_NAMES[c])
            if v is not None:
                out[c] = v
        return out

    def benign(self) -> dict[str, float]:
        return {c: getattr(self, _METRIC_FIELD_NAMES[c]) for c in BENIGN_COLUMNS
                if getattr(self, _METRIC_FIELD_NAMES[c]) is not None}

    def row(self) -> dict[str, Any]:
        """The record as a leaderboard row (column name -> value; None for missing)."""
        return {f.column: getattr(self, f.name) for f in FIELDS}

    def to_json_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], *, where: str = "record") -> Record:
        """Validate and build; ``where`` (e.g. the file path) goes into every error message."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: not a JSON object; the record file is damaged, restore it from a backup")
        version = data.get("schema_version")
        if version != RECORD_SCHEMA_VERSION:
            raise UserError(f"{where}: record schema_version {version!r} is not {RECORD_SCHEMA_VERSION}; "
                            "it was written by another robustbench_dml version or is damaged")
        missing = [f.name for f in FIELDS if f.name not in data and f.name != "note"]
        if missing:
            raise UserError(f"{where}: record lacks fields {', '.join(missing)}; the file is damaged")
        unknown = sorted(set(data) - set(_BY_NAME))
        if unknown:
            raise UserError(f"{where}: record has unknown fields {', '.join(unknown)}; the file is damaged")
        kwargs = {f.name: data.get(f.name) for f in FIELDS}
        _validate_fields(kwargs, where=where)
        return cls(**kwargs)

    @classmethod
    def from_evaluation(cls, result: Mapping[str, Any], *, submitter: str, created: str | None = None,
                        note: str | None = None) -> Record:
        """Build a record from an evaluation result (the ``EvaluationResult.to_json()`` layout of ``docs/protocol.md``).

        The scores are recomputed from ``raw`` with :mod:`robustbench_dml.scoring`; a stored ``ERS``/``ARS`` that
        disagrees with its raw results (an edited file) is refused. ``created`` defaults to today's UTC date.
        """
        if not isinstance(result, Mapping):
            raise UserError("evaluation result is not a JSON object; pass the file written by "
                            "`dmlbench evaluate --json`")
        if result.get("schema_version") != 1:
            raise UserError(f"evaluation result schema_version {result.get('schema_version')!r} is not 1; "
                            "re-run `dmlbench evaluate` with this version")
        try:
            ckpt = result["checkpoint"]
            suite = result["suite"]
            meta = ckpt.get("meta") or {}
            raw = dict(result.get("raw") or {})
            benign = dict(result.get("benign") or {})
            scores = dict(result.get("scores") or {})
            sha = str(ckpt["sha256"]).lower()
            suite_hash = str(suite["hash"]).lower()
            suite_id = str(suite["id"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"evaluation result lacks {exc}; pass the file written by "
                            "`dmlbench evaluate --json`") from None
        if not _HEX64.match(sha):
            raise UserError(f"evaluation result: checkpoint sha256 {sha!r} is not 64 hex digits")
        if not suite_hash:
            raise UserError("evaluation result: the suite hash is empty")
        if not isinstance(submitter, str) or not submitter.strip() or "\n" in submitter or len(submitter) > 100:
            raise UserError("submitter name must be one non-empty line of at most 100 characters (--name)")
        if "R@1" not in raw and "R@1" in benign:
            raw["R@1"] = benign["R@1"]

        def num(d: Mapping[str, Any], key: str) -> float | None:
            v = d.get(key)
            return None if v is None else v

        computed: dict[str, float | None] = {}
        for name in scoring.SCORES:
            try:
                computed[name] = scoring.score(raw, name)
            except ValueError:
                computed[name] = None
            stored = scores.get(name)
            if stored is not None and computed[name] is not None and abs(float(stored) - computed[name]) > 1e-6:
                raise UserError(f"evaluation result: stored {name} {stored} does not match its raw results "
                                f"({computed[name]:.6f}); the file was edited, re-run `dmlbench evaluate`")

        per_query = result.get("per_query")

        def ci(name: str) -> tuple[float | None, float | None]:
            """Re-derived from the per-query results (the stored interval must agree); None without them."""
            v = scores.get(f"{name}_ci")
            if v is not None and (not isinstance(v, (list, tuple)) or len(v) != 2):
                raise UserError(f"evaluation result: scores.{name}_ci must be [lo, hi], got {v!r}")
            if not isinstance(per_query, Mapping) or computed[name] is None:
                return None, None
            try:
                derived = scoring.bootstrap_ci(per_query, score=name, seed=int(result.get("seed") or 0))
            except (ValueError, TypeError, KeyError):
                return None, None
            if v is not None and None not in v and max(abs(float(a) - b) for a, b in zip(v, derived)) > 1e-6:
                raise UserError(f"evaluation result: stored {name} interval {v} does not match its per-query "
                                "results; the file was edited, re-run `dmlbench evaluate`")
            return derived

        ers_lo, ers_hi = ci("ERS")
        ars_lo, ars_hi = ci("ARS")
        defense_config = meta.get("defense_config")
        values: dict[str, Any] = {
            "record_id": make_record_id(sha, suite_hash),
            "dataset": meta.get("dataset"),
            "suite_id": suite_id,
            "suite_version": suite.get("version"),
            "defense": meta.get("defense"),
            "backbone": meta.get("backbone"),
            "steps": _find_steps(defense_config),
            "ers": computed["ERS"], "ars": computed["ARS"],
            "ers_lo": ers_lo, "ers_hi": ers_hi, "ars_lo": ars_lo, "ars_hi": ars_hi,
            "worst_case": scores.get("worst_case"),
            "eligible": bool(suite.get("eligible", False)),
            "reported": False,
            "submitter": submitter.strip(),
            "source": None,
            "created": created or _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "seed": result.get("seed"),
            "device": result.get("device"),
            "num_queries": result.get("num_queries"),
            "robrank_compat": bool(result.get("robrank_compat", False)),
            "checkpoint_sha256": sha,
            "suite_hash": suite_hash,
            "defense_config": _json_str(defense_config),
            "versions": _json_str(result.get("versions")),
            "note": note,
            "schema_version": RECORD_SCHEMA_VERSION,
        }
        for c in BENIGN_COLUMNS:
            values[_METRIC_FIELD_NAMES[c]] = num(benign, c)
        for c in RAW_COLUMNS:
            values[_METRIC_FIELD_NAMES[c]] = num(raw, c)
        for key in ("dataset", "defense", "backbone"):
            if not isinstance(values[key], str) or not values[key]:
                raise UserError(f"evaluation result: checkpoint meta lacks {key!r}; the checkpoint's meta.json "
                                "must name its dataset, backbone and defense")
        _validate_fields(values, where="evaluation result")
        return cls(**values)


def _find_steps(cfg: Any) -> int | None:
    """Training PGD steps from a defense configuration (``steps`` at any depth, breadth first), if any."""
    queue = [cfg]
    while queue:
        node = queue.pop(0)
        if isinstance(node, Mapping):
            v = node.get("steps")
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            queue.extend(x for x in node.values() if isinstance(x, Mapping))
    return None


def _validate_fields(values: Mapping[str, Any], *, where: str) -> None:
    for f in FIELDS:
        v = values.get(f.name)
        if v is None:
            if not f.nullable:
                raise UserError(f"{where}: field {f.name!r} must not be null")
            continue
        ok = True
        if f.kind == "str":
            ok = isinstance(v, str)
        elif f.kind == "bool":
            ok = isinstance(v, bool)
        elif f.kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif f.kind == "float":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if ok and not math.isfinite(float(v)):
                raise UserError(f"{where}: field {f.name!r} = {v} is not a finite number")
        if not ok:
            raise UserError(f"{where}: field {f.name!r} = {v!r} has the wrong type (expected {f.kind})")
    for key in ("dataset", "suite_id"):
        if values.get(key) is not None:
            try:
                safe_name(values[key], key)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
    rid = values.get("record_id")
    if isinstance(rid, str) and not _SAFE.match(rid):
        raise UserError(f"{where}: record_id {rid!r} is not a safe file name")
    sha = values.get("checkpoint_sha256")
    if not values.get("reported") and not (isinstance(sha, str) and _HEX64.match(sha)):
        raise UserError(f"{where}: a measured (not reported) record needs a 64-hex checkpoint_sha256")
    for key in ("defense_config", "versions"):
        v = values.get(key)
        if isinstance(v, str):
            try:
                json.loads(v)
            except json.JSONDecodeError:
                raise UserError(f"{where}: field {key!r} is not valid JSON") from None


# ---- frames -------------------------------------------------------------------------------------------------
def coerce_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard columns of ``df`` in order with the explicit :data:`DTYPES` (missing floats -> NaN)."""
    import pandas as pd

    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"leaderboard frame lacks columns {', '.join(missing)}")
    data = {}
    for f in FIELDS:
        col = df[f.column].reset_index(drop=True)
        if f.kind == "float":
            data[f.column] = pd.to_numeric(col, errors="raise").astype("float64")
        elif f.kind == "str":
            data[f.column] = col.astype(object).where(col.notna(), None).astype(DTYPES[f.column])
        else:
            data[f.column] = col.astype(DTYPES[f.column])
    return pd.DataFrame(data, index=pd.RangeIndex(len(df)))


def empty_frame() -> pd.DataFrame:
    """A typed leaderboard frame with no rows."""
    import pandas as pd

    return pd.DataFrame({c: pd.Series([], dtype=DTYPES[c]) for c in COLUMNS})


def records_to_frame(records: Iterable[Record]) -> pd.DataFrame:
    """Records -> typed leaderboard frame, sorted by ARS desc, ERS desc, record_id (NaN scores last)."""
    import pandas as pd

    rows = [r.row() for r in records]
    if not rows:
        return empty_frame()
    data = {f.column: pd.Series([row[f.column] for row in rows],
                                dtype=("float64" if f.kind == "float" else object)) for f in FIELDS}
    return sort_frame(coerce_frame(pd.DataFrame(data)))


def sort_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Leaderboard order: ARS desc, then ERS desc, then record_id asc (NaN scores last); index reset."""
    if df.empty:
        return df.reset_index(drop=True)
    out = df.sort_values(["ARS", "ERS", "record_id"], ascending=[False, False, True], na_position="last",
                         kind="mergesort")
    return out.reset_index(drop=True)


def _sort_key(record: Record) -> tuple:
    return (record.ars is None, -(record.ars or 0.0), record.ers is None, -(record.ers or 0.0), record.record_id)


def sort_records(records: Iterable[Record]) -> list[Record]:
    """Records in leaderboard order (same order as :func:`sort_frame`)."""
    return sorted(records, key=_sort_key)


def records_to_table(records: Iterable[Record]) -> pa.Table:
    """Records -> pyarrow table with :data:`ARROW_SCHEMA`, in leaderboard order (no pandas involved)."""
    rows = [r.row() for r in sort_records(records)]
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


# ---- files --------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _replace(src: str | Path, dst: str | Path) -> None:
    """The one step that makes a written file visible (separate so tests can simulate a crash here)."""
    os.replace(src, dst)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``, fsync dir.

    A crash at any point leaves either the old file (or none) or the complete new one; the temp file is removed
    on any Python-level error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp creates 0600; published files are ordinary shared files
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_record(record: Record, path: Path) -> None:
    atomic_write_bytes(Path(path), record.to_json().encode())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def read_record(path: Path) -> Record:
    """Load and validate one record file; any damage is a UserError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text, parse_constant=_reject_constant)
    except FileNotFoundError:
        raise UserError(f"record file {path} is missing") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"record file {path} is damaged ({str(exc).splitlines()[0]}); restore it from a backup "
                        "or delete it and resubmit the checkpoint") from None
    record = Record.from_json_dict(data, where=f"record file {path}")
    if record.record_id != path.stem:
        raise UserError(f"record file {path} holds record_id {record.record_id!r}, not its file name")
    return record
