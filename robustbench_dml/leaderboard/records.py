"""The typed, append-only result record: one per (checkpoint sha256, suite hash), and the leaderboard frame schema.

A :class:`Record` (schema version 2) holds the benign metrics, the provenance (dataset, backbone, defense and
configuration, seed, device, versions, suite id/version/hash, submitter, date) and, for every measurement protocol
it was measured under (:mod:`robustbench_dml.protocols`), a :class:`ProtocolScores`: every raw attack result (units
of ``docs/protocol.md``), ERS, ARS, their bootstrap confidence intervals and the worst cases. Rows published by
papers are records too, with ``reported=True``, a ``source`` citation and the ``robrank`` protocol only (no
checkpoint; values the paper does not give are ``None``).

On disk a record is one JSON file (``<root>/records/<dataset>/<suite_id>/<record_id>.json``) written atomically
and never edited. Loading validates schema version, fields, types and finiteness; a damaged file is a
:class:`~robustbench_dml.errors.UserError` naming the file. Version 1 files (flat, one protocol named by their
``robrank_compat`` flag) are read as records of that one protocol.

The leaderboard frame (:data:`COLUMNS`, :data:`DTYPES`, :data:`ARROW_SCHEMA`) has one row per record and protocol
(a ``protocol`` column) and uses the papers' column names
(``R@1``, ``CA+``, ``ES:R``, ...) and explicit dtypes: ``string`` for text, nullable ``Int64`` for integers,
``float64`` (NaN = not measured / not published) and ``bool``. Nothing is left to pandas' inference, so an empty
frame is typed and pandas 3's ``str`` inference never leaks in.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from robustbench_dml import columns, scoring
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError

if TYPE_CHECKING:  # pandas is imported where frames are built, so writers need only pyarrow
    import pandas as pd

__all__ = ["RECORD_SCHEMA_VERSION", "Record", "ProtocolScores", "FIELDS", "COLUMNS", "DTYPES", "ARROW_SCHEMA",
           "BENIGN_COLUMNS", "RAW_COLUMNS", "SCORE_COLUMNS", "WORST_COLUMNS", "make_record_id", "records_to_frame",
           "records_to_table", "record_rows", "sort_frame", "empty_frame", "coerce_frame", "upgrade_frame",
           "write_record", "read_record", "atomic_write_bytes", "sha256_file", "safe_name"]

RECORD_SCHEMA_VERSION = 2

BENIGN_COLUMNS = columns.BENIGN_KEYS
RAW_COLUMNS = columns.ATTACK_KEYS
#: ``WC:<threat>``: the per-threat worst cases of ``scoring.THREATS`` (percent of queries broken; lower is better)
WORST_COLUMNS = columns.WORST_KEYS[1:]
SCORE_COLUMNS = columns.SCORE_KEYS + columns.WORST_KEYS


@dataclass(frozen=True)
class Field:
    name: str       # dataclass attribute / JSON key
    column: str     # leaderboard column (papers' names)
    kind: str       # "str" | "int" | "float" | "bool"
    nullable: bool


def _f(name: str, column: str | None, kind: str, nullable: bool = False) -> Field:
    return Field(name, column or name, kind, nullable)


_METRIC_FIELD_NAMES = {m.key: m.field for m in columns.ALL}

_ID_FIELDS = (
    _f("record_id", None, "str"),
    _f("dataset", None, "str"),
    _f("suite_id", None, "str"),
    _f("suite_version", None, "int", True),
    _f("defense", None, "str"),
    _f("backbone", None, "str"),
    _f("steps", None, "int", True),
)
_BENIGN_FIELDS = tuple(_f(_METRIC_FIELD_NAMES[c], c, "float", True) for c in BENIGN_COLUMNS)
#: the fields of one protocol's block: its raw attack results and scores, plus ``r1``, the R@1 its ARS divides by
#: (the evaluated queries' R@1 aggregated as that protocol aggregates; not a leaderboard column)
SCORE_FIELDS: tuple[Field, ...] = (_f("r1", "R@1", "float", True),) + tuple(
    _f(_METRIC_FIELD_NAMES[c], c, "float", True) for c in RAW_COLUMNS + SCORE_COLUMNS)
_PROVENANCE_FIELDS = (
    _f("eligible", None, "bool"),
    _f("reported", None, "bool"),
    _f("submitter", None, "str"),
    _f("source", None, "str", True),
    _f("created", None, "str"),
    _f("seed", None, "int", True),
    _f("device", None, "str", True),
    _f("num_queries", None, "int", True),
    _f("checkpoint_sha256", None, "str", True),
    _f("suite_hash", None, "str", True),
    _f("defense_config", None, "str"),
    _f("versions", None, "str"),
    _f("note", None, "str", True),
    _f("schema_version", None, "int"),
)
#: the record's own fields (its JSON file also holds ``protocols``: protocol -> the :data:`SCORE_FIELDS` block)
RECORD_FIELDS: tuple[Field, ...] = _ID_FIELDS + _BENIGN_FIELDS + _PROVENANCE_FIELDS
_PROTOCOL_FIELD = _f("protocol", None, "str")
#: every column of the leaderboard frame, in order: one row per (record, protocol)
FIELDS: tuple[Field, ...] = (_ID_FIELDS + (_PROTOCOL_FIELD,) + _BENIGN_FIELDS + SCORE_FIELDS[1:]
                             + _PROVENANCE_FIELDS)
_BY_NAME = {f.name: f for f in RECORD_FIELDS}
COLUMNS: tuple[str, ...] = tuple(f.column for f in FIELDS)
COLUMN_TO_FIELD = {f.column: f.name for f in FIELDS}

# dtype names (equal to the dtype objects pandas reports): "string" is pd.StringDtype() with pd.NA as missing
_PD_DTYPE = {"str": "string", "int": "Int64", "float": "float64", "bool": "bool"}
_PA_TYPE = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
#: pandas dtype of every leaderboard column
DTYPES: dict[str, str] = {f.column: _PD_DTYPE[f.kind] for f in FIELDS}


def _arrow_schema(fields: Sequence[Field], version: int) -> pa.Schema:
    return pa.schema([pa.field(f.column, _PA_TYPE[f.kind], nullable=f.nullable) for f in fields],
                     metadata={b"robustbench_dml.schema_version": str(version).encode()})


#: pyarrow schema of every leaderboard parquet file
ARROW_SCHEMA = _arrow_schema(FIELDS, RECORD_SCHEMA_VERSION)
# version 1 files: no protocol column, a robrank_compat flag before checkpoint_sha256 (read by :func:`upgrade_frame`)
def _v1_fields() -> tuple[Field, ...]:
    kept = [f for f in FIELDS if f is not _PROTOCOL_FIELD and f.column not in WORST_COLUMNS]
    at = [f.name for f in kept].index("checkpoint_sha256")
    return tuple(kept[:at]) + (_f("robrank_compat", None, "bool"),) + tuple(kept[at:])


ARROW_SCHEMA_V1 = _arrow_schema(_v1_fields(), 1)

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
class ProtocolScores:
    """One protocol's raw attack results and scores (units of ``docs/protocol.md``; None = not measured).

    ``r1`` is the R@1 ARS divides by under this protocol (the evaluated queries' benign top-1, aggregated as the
    protocol aggregates); the record's own ``r1`` is the whole-gallery benign R@1 the tables show.
    """

    r1: float | None
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
    wc_candidate: float | None = None
    wc_query: float | None = None
    wc_recall: float | None = None

    def raw(self) -> dict[str, float]:
        """The raw attack results plus ``R@1`` that are present (the input of ``scoring.ers/ars``)."""
        return {f.column: getattr(self, f.name) for f in SCORE_FIELDS[:1 + len(RAW_COLUMNS)]
                if getattr(self, f.name) is not None}

    def columns(self) -> dict[str, Any]:
        """Leaderboard column -> value of the attack and score columns."""
        return {f.column: getattr(self, f.name) for f in SCORE_FIELDS[1:]}

    def to_json_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in SCORE_FIELDS}

    @classmethod
    def from_json_dict(cls, data: Any, *, where: str) -> ProtocolScores:
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: not a JSON object; the record file is damaged")
        names = {f.name for f in SCORE_FIELDS}
        if set(data) != names:
            bad = sorted(set(data) ^ names)
            raise UserError(f"{where}: fields {', '.join(bad)} missing or unknown; the record file is damaged")
        _validate(SCORE_FIELDS, data, where=where)
        return cls(**{f.name: data[f.name] for f in SCORE_FIELDS})


@dataclass(frozen=True)
class Record:
    """One checkpoint's result under one suite: benign metrics, provenance, and per measured protocol
    (:mod:`robustbench_dml.protocols`) its :class:`ProtocolScores`. In a leaderboard frame it is one row per
    protocol."""

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
    eligible: bool
    reported: bool
    submitter: str
    source: str | None
    created: str
    seed: int | None
    device: str | None
    num_queries: int | None
    checkpoint_sha256: str | None
    suite_hash: str | None
    defense_config: str
    versions: str
    protocols: Mapping[str, ProtocolScores]
    note: str | None = None
    schema_version: int = RECORD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        _validate_fields({f.name: getattr(self, f.name) for f in RECORD_FIELDS}, where="record")
        _validate_protocols(self.protocols, where="record")

    # ---- views -------------------------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        """The protocol the plain accessors show: the default when measured, else the one measured."""
        return P.DEFAULT if P.DEFAULT in self.protocols else next(iter(self.protocols))

    def scores(self, protocol: str | None = None) -> ProtocolScores:
        protocol = protocol or self.protocol
        if protocol not in self.protocols:
            raise UserError(f"record {self.record_id} holds the {', '.join(self.protocols)} protocol only, "
                            f"not {protocol}")
        return self.protocols[protocol]

    def raw(self, protocol: str | None = None) -> dict[str, float]:
        """The raw attack results plus the ARS denominator ``R@1`` of ``protocol`` (the input of scoring)."""
        return self.scores(protocol).raw()

    ers = property(lambda self: self.scores().ers)
    ars = property(lambda self: self.scores().ars)

    def benign(self) -> dict[str, float]:
        return {c: getattr(self, _METRIC_FIELD_NAMES[c]) for c in BENIGN_COLUMNS
                if getattr(self, _METRIC_FIELD_NAMES[c]) is not None}

    def rows(self) -> list[dict[str, Any]]:
        """The record as leaderboard rows, one per measured protocol (column name -> value; None for missing)."""
        own = {f.column: getattr(self, f.name) for f in RECORD_FIELDS}
        return [{c: {**own, "protocol": p, **self.protocols[p].columns()}[c] for c in COLUMNS}
                for p in P.PROTOCOLS if p in self.protocols]

    def to_json_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in RECORD_FIELDS}
        d["protocols"] = {p: s.to_json_dict() for p, s in self.protocols.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], *, where: str = "record") -> Record:
        """Validate and build; ``where`` (e.g. the file path) goes into every error message. A version 1 record
        (one protocol, flat) is read as the record of its one protocol."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: not a JSON object; the record file is damaged, restore it from a backup")
        version = data.get("schema_version")
        if version == 1:
            data = _upgrade_v1(data, where)
        elif version != RECORD_SCHEMA_VERSION:
            raise UserError(f"{where}: record schema_version {version!r} is not 1 or {RECORD_SCHEMA_VERSION}; "
                            "it was written by another robustbench_dml version or is damaged")
        names = {f.name for f in RECORD_FIELDS} | {"protocols"}
        missing = sorted(n for n in names if n not in data and n != "note")
        if missing:
            raise UserError(f"{where}: record lacks fields {', '.join(missing)}; the file is damaged")
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{where}: record has unknown fields {', '.join(unknown)}; the file is damaged")
        kwargs = {f.name: data.get(f.name) for f in RECORD_FIELDS}
        _validate_fields(kwargs, where=where)
        blocks = data["protocols"]
        if not isinstance(blocks, Mapping):
            raise UserError(f"{where}: protocols is not a JSON object; the file is damaged")
        kwargs["protocols"] = {p: ProtocolScores.from_json_dict(b, where=f"{where}, protocol {p}")
                               for p, b in blocks.items()}
        _validate_protocols(kwargs["protocols"], where=where)
        return cls(**kwargs)

    @classmethod
    def from_evaluation(cls, result: Mapping[str, Any], *, submitter: str, created: str | None = None,
                        note: str | None = None) -> Record:
        """Build a record from an evaluation result (``EvaluationResult.to_json()``, schema 1 or 2), every measured
        protocol's block included.

        Scores are re-derived, never trusted: ERS and ARS from each protocol's ``raw``, their intervals from its
        ``per_query``, the worst case from its ``success``; a stored value that disagrees (an edited file) is
        refused. ``created`` defaults to today's UTC date.
        """
        from robustbench_dml.results import upgrade

        if isinstance(result, Mapping) and not isinstance(result, dict):
            result = dict(result)
        result = upgrade(result)
        try:
            ckpt = result["checkpoint"]
            suite = result["suite"]
            meta = ckpt.get("meta") or {}
            benign = dict(result.get("benign") or {})
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
        seed = result.get("seed")
        blocks = {p: _derive_scores(b, benign, seed if isinstance(seed, int) else 0, where=f"evaluation result "
                                    f"({p} protocol)") for p, b in result["protocols"].items()}
        defense_config = meta.get("defense_config")
        values: dict[str, Any] = {
            "record_id": make_record_id(sha, suite_hash),
            "dataset": meta.get("dataset"),
            "suite_id": suite_id,
            "suite_version": suite.get("version"),
            "defense": meta.get("defense"),
            "backbone": meta.get("backbone"),
            "steps": _find_steps(defense_config),
            "eligible": bool(suite.get("eligible", False)),
            "reported": False,
            "submitter": submitter.strip(),
            "source": None,
            "created": created or _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "seed": seed,
            "device": result.get("device"),
            "num_queries": result.get("num_queries"),
            "checkpoint_sha256": sha,
            "suite_hash": suite_hash,
            "defense_config": _json_str(defense_config),
            "versions": _json_str(result.get("versions")),
            "note": note,
            "schema_version": RECORD_SCHEMA_VERSION,
        }
        for c in BENIGN_COLUMNS:
            values[_METRIC_FIELD_NAMES[c]] = benign.get(c)
        for key in ("dataset", "defense", "backbone"):
            if not isinstance(values[key], str) or not values[key]:
                raise UserError(f"evaluation result: checkpoint meta lacks {key!r}; the checkpoint's meta.json "
                                "must name its dataset, backbone and defense")
        _validate_fields(values, where="evaluation result")
        _validate_protocols(blocks, where="evaluation result")
        return cls(**values, protocols=blocks)


def _derive_scores(block: Mapping[str, Any], benign: Mapping[str, Any], seed: int, *, where: str) -> ProtocolScores:
    """One protocol's scores re-derived from its raw, per-query and success results (stored ones must agree)."""
    if not isinstance(block, Mapping):
        raise UserError(f"{where}: not a JSON object; pass the file written by `dmlbench evaluate --json`")
    raw = dict(block.get("raw") or {})
    scores = dict(block.get("scores") or {})
    per_query = block.get("per_query")
    success = block.get("success")
    if "R@1" not in raw and "R@1" in benign:
        raw["R@1"] = benign["R@1"]
    values: dict[str, Any] = {f.name: raw.get(f.column) for f in SCORE_FIELDS[:1 + len(RAW_COLUMNS)]}
    for name in scoring.SCORES:
        try:
            derived = scoring.score(raw, name)
        except ValueError:
            derived = None
        stored = scores.get(name)
        if stored is not None and derived is not None and abs(float(stored) - derived) > 1e-6:
            raise UserError(f"{where}: stored {name} {stored} does not match its raw results ({derived:.6f}); the "
                            "file was edited, re-run `dmlbench evaluate`")
        lo = hi = None
        interval = scores.get(f"{name}_ci")
        if interval is not None and (not isinstance(interval, (list, tuple)) or len(interval) != 2):
            raise UserError(f"{where}: scores.{name}_ci must be [lo, hi], got {interval!r}")
        if isinstance(per_query, Mapping) and derived is not None:
            try:
                lo, hi = scoring.bootstrap_ci(per_query, score=name, seed=seed)
            except (ValueError, TypeError, KeyError):
                lo = hi = None
            if interval is not None and None not in interval and lo is not None and \
                    max(abs(float(a) - b) for a, b in zip(interval, (lo, hi))) > 1e-6:
                raise UserError(f"{where}: stored {name} interval {interval} does not match its per-query "
                                "results; the file was edited, re-run `dmlbench evaluate`")
        values.update({name.lower(): derived, f"{name.lower()}_lo": lo, f"{name.lower()}_hi": hi})
    worst = scores.get("worst_case")
    by_threat: dict[str, float] = {}
    if isinstance(success, Mapping) and success:
        try:
            derived_worst = scoring.worst_case(success)
            r1 = per_query.get("R@1") if isinstance(per_query, Mapping) else None
            by_threat = scoring.worst_case_by_threat(success, None if r1 is None else [v > 0 for v in r1])
        except (ValueError, TypeError):
            derived_worst = None
        if worst is not None and derived_worst is not None and abs(float(worst) - derived_worst) > 1e-6:
            raise UserError(f"{where}: stored worst_case {worst} does not match its per-query successes; the file "
                            "was edited, re-run `dmlbench evaluate`")
        worst = derived_worst
    values["worst_case"] = worst
    for threat in scoring.THREATS:
        v = by_threat.get(threat)
        values[f"wc_{threat}"] = v if v is not None and math.isfinite(v) else None
    _validate(SCORE_FIELDS, values, where=where)
    return ProtocolScores(**values)


def _upgrade_v1(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A version 1 record (flat, one protocol named by ``robrank_compat``) in the version 2 layout."""
    if "protocols" in data:
        raise UserError(f"{where}: a version 1 record with protocols; the file is damaged")
    if not isinstance(data.get("robrank_compat"), bool):
        raise UserError(f"{where}: field 'robrank_compat' = {data.get('robrank_compat')!r} has the wrong type "
                        "(expected bool)")
    block = {f.name: data.get(f.name) for f in SCORE_FIELDS}
    protocol = P.ROBRANK if data["robrank_compat"] else P.CORRECTED
    rest = {k: v for k, v in data.items() if k not in block or k == "r1"}
    rest.pop("robrank_compat")
    return {**rest, "protocols": {protocol: block}, "schema_version": RECORD_SCHEMA_VERSION}


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


def _validate(fields: Sequence[Field], values: Mapping[str, Any], *, where: str) -> None:
    """Types, nullability and finiteness of ``fields`` in ``values``."""
    for f in fields:
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


def _validate_protocols(blocks: Any, *, where: str) -> None:
    if not isinstance(blocks, Mapping) or not blocks:
        raise UserError(f"{where}: a record needs at least one protocol's results")
    for p, b in blocks.items():
        if p not in P.PROTOCOLS:
            raise UserError(f"{where}: unknown protocol {p!r} (expected {' or '.join(P.PROTOCOLS)})")
        if not isinstance(b, ProtocolScores):
            raise UserError(f"{where}: protocol {p} holds {type(b).__name__}, not ProtocolScores")


def _validate_fields(values: Mapping[str, Any], *, where: str) -> None:
    _validate(RECORD_FIELDS, values, where=where)
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


def upgrade_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A version 1 frame (one protocol per record, named by ``robrank_compat``) in the current columns."""
    if "protocol" in df.columns or "robrank_compat" not in df.columns:
        return df
    out = df.drop(columns=["robrank_compat"])
    out["protocol"] = df["robrank_compat"].map({True: P.ROBRANK, False: P.CORRECTED}).astype(object)
    for c in WORST_COLUMNS:
        out[c] = float("nan")
    out["schema_version"] = RECORD_SCHEMA_VERSION
    return out[list(COLUMNS)]


def _row_key(row: Mapping[str, Any]) -> tuple:
    ars, ers = row["ARS"], row["ERS"]
    return (ars is None, -(ars or 0.0), ers is None, -(ers or 0.0), row["record_id"], row["protocol"])


def record_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Every record's rows (one per protocol) in leaderboard order (the order of :func:`sort_frame`)."""
    return sorted((row for r in records for row in r.rows()), key=_row_key)


def records_to_frame(records: Iterable[Record]) -> pd.DataFrame:
    """Records -> typed leaderboard frame (one row per record and protocol) in leaderboard order."""
    import pandas as pd

    rows = record_rows(records)
    if not rows:
        return empty_frame()
    data = {f.column: pd.Series([row[f.column] for row in rows],
                                dtype=("float64" if f.kind == "float" else object)) for f in FIELDS}
    return coerce_frame(pd.DataFrame(data))


def sort_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Leaderboard order: ARS desc, then ERS desc, then record_id and protocol asc (NaN scores last)."""
    if df.empty:
        return df.reset_index(drop=True)
    out = df.sort_values(["ARS", "ERS", "record_id", "protocol"], ascending=[False, False, True, True],
                         na_position="last", kind="mergesort")
    return out.reset_index(drop=True)


def records_to_table(records: Iterable[Record]) -> pa.Table:
    """Records -> pyarrow table with :data:`ARROW_SCHEMA`, in leaderboard order (no pandas involved)."""
    return pa.Table.from_pylist(record_rows(records), schema=ARROW_SCHEMA)


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
