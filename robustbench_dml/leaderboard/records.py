"""The typed, append-only result record: one per (checkpoint sha256, suite hash).

A :class:`Record` (schema version 5) holds the benign metrics, the provenance (dataset, backbone, defense and
configuration, seed, device, versions, suite id/version/hash, submitter, date) and, for every measurement protocol
it was measured under (:mod:`robustbench_dml.protocols`), a :class:`ProtocolScores`: every raw attack result (units
of ``docs/protocol.md``), ERS, ARS, their bootstrap confidence intervals and the worst cases. Rows published by
papers are records too, with ``reported=True``, a ``source`` citation and the ``robrank`` protocol only (no
checkpoint; values the paper does not give are ``None``). A measured record names its evidence file, the per-query
results every number is derived from, by hash (:mod:`robustbench_dml.leaderboard.evidence`); every value is checked
against its metric's range (:func:`robustbench_dml.columns.out_of_range`).

The two dataclasses are the one declaration of the schema: :data:`RECORD_FIELDS` and :data:`SCORE_FIELDS` (name,
leaderboard column, kind, nullability) are read off them, and the leaderboard frame
(:mod:`robustbench_dml.leaderboard.frames`) and validation follow from those.

On disk a record is one JSON file (``<root>/records/<dataset>/<board>/<record_id>.json``, :func:`board_name`)
written atomically and never edited. Loading validates schema version, fields, types and finiteness; a damaged file
is a :class:`~robustbench_dml.errors.UserError` naming the file. Version 1 files (flat, one protocol named by their
``robrank_compat`` flag) are read as records of that one protocol. Building a record from an evaluation result
re-derives every score (:mod:`robustbench_dml.leaderboard.derive`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustbench_dml import columns
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError
from robustbench_dml.files import atomic_write_bytes, read_bounded

__all__ = ["RECORD_SCHEMA_VERSION", "BUDGETS", "Record", "ProtocolScores", "Field", "RECORD_FIELDS", "SCORE_FIELDS",
           "BENIGN_COLUMNS", "RAW_COLUMNS", "SCORE_COLUMNS", "WORST_COLUMNS", "make_record_id", "write_record",
           "read_record", "safe_name", "check_submitter", "board_name"]

RECORD_SCHEMA_VERSION = 5
#: the training budgets a measured row may name (``budget``): the cpu studies' subset and epochs, or the published
#: schedule
BUDGETS = ("cpu", "full")

#: the record's benign columns: retrieval (percent) and the collapse diagnostic (schema 3 on; None before)
BENIGN_COLUMNS = columns.BENIGN_KEYS + columns.SPACE_KEYS
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


_COLUMN_OF_FIELD = {m.field: m.key for m in columns.ALL}
FIELD_OF_COLUMN = {m.key: m.field for m in columns.ALL}

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def board_name(suite_id: str, version: int | None) -> str:
    """The leaderboard of suite ``suite_id`` version ``version``: one per suite version, version 1's (and the
    papers' rows, of no version) under the bare id they had before suites had a second version, a later one under
    ``<id>.v<version>``."""
    return suite_id if version in (None, 1) else f"{suite_id}.v{version}"


def safe_name(value: str, what: str) -> str:
    """A dataset or suite id usable as a directory name (letters, digits, ``_ . + -``)."""
    if not isinstance(value, str) or not _SAFE.match(value) or value in ("records",):
        raise UserError(f"invalid {what} {value!r}: use letters, digits and _ . + - (at most 64 characters)")
    return value


def check_submitter(name: str) -> str:
    """A submitter name a record can hold (one non-empty line of at most 100 characters), checked by the commands
    that publish before they compute anything."""
    if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name or len(name) > 100:
        raise UserError("submitter name must be one non-empty line of at most 100 characters (--name)")
    return name


def make_record_id(checkpoint_sha256: str, suite_hash: str) -> str:
    """``<sha256[:16]>-<suite_hash[:12]>``: one record per (checkpoint, suite)."""
    return f"{checkpoint_sha256[:16]}-{suite_hash[:12]}"


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
        check_values(SCORE_FIELDS, data, where=where)
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
    intra_class_distance: float | None
    inter_class_distance: float | None
    entanglement: float | None
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
    #: the training budget of a measured row (:data:`BUDGETS`; None: not stated)
    budget: str | None = None
    #: how the row was made (JSON: the commands, the resolved configurations, the data files' and the weights'
    #: sha256; :mod:`robustbench_dml.leaderboard.recipes`); None: not recorded
    recipe: str | None = None
    #: sha256 of the record's evidence file (:mod:`robustbench_dml.leaderboard.evidence`: the per-query results
    #: every number here is derived from); None for a paper's row and for records written before schema 5
    evidence_sha256: str | None = None
    schema_version: int = RECORD_SCHEMA_VERSION
    #: the evidence file's bytes, held by a record built from an evaluation result until the store writes them
    evidence: bytes | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_record_values({f.name: getattr(self, f.name) for f in RECORD_FIELDS}, where="record")
        check_protocols(self.protocols, where="record")

    # ---- views -------------------------------------------------------------------------------------------
    @property
    def board(self) -> str:
        """The leaderboard (suite version) this record belongs to (:func:`board_name`)."""
        return board_name(self.suite_id, self.suite_version)

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
        return {c: getattr(self, FIELD_OF_COLUMN[c]) for c in BENIGN_COLUMNS
                if getattr(self, FIELD_OF_COLUMN[c]) is not None}

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
        elif version not in (2, 3, 4, RECORD_SCHEMA_VERSION):
            raise UserError(f"{where}: record schema_version {version!r} is not 1 to {RECORD_SCHEMA_VERSION}; "
                            "it was written by another robustbench_dml version or is damaged")
        if version in (1, 2):  # before the collapse diagnostic: not measured
            data = {**{c: None for c in columns.SPACE_KEYS}, **data}
        if version in (1, 2, 3):  # before budgets and recipes: not stated
            data = {**data, "budget": None, "recipe": None}
        if version in (1, 2, 3, 4):  # before evidence files: none
            data = {**data, "evidence_sha256": None, "schema_version": RECORD_SCHEMA_VERSION}
        names = {f.name for f in RECORD_FIELDS} | {"protocols"}
        missing = sorted(n for n in names if n not in data and n not in ("note", "budget", "recipe"))
        if missing:
            raise UserError(f"{where}: record lacks fields {', '.join(missing)}; the file is damaged")
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{where}: record has unknown fields {', '.join(unknown)}; the file is damaged")
        kwargs = {f.name: data.get(f.name) for f in RECORD_FIELDS}
        check_record_values(kwargs, where=where)
        blocks = data["protocols"]
        if not isinstance(blocks, Mapping):
            raise UserError(f"{where}: protocols is not a JSON object; the file is damaged")
        kwargs["protocols"] = {p: ProtocolScores.from_json_dict(b, where=f"{where}, protocol {p}")
                               for p, b in blocks.items()}
        check_protocols(kwargs["protocols"], where=where)
        return cls(**kwargs)


def _fields_of(cls: type) -> tuple[Field, ...]:
    """The schema fields of a record dataclass, read off its annotations (``kind`` or ``kind | None``)."""
    out = []
    for f in dataclasses.fields(cls):
        kind, _, none = str(f.type).partition(" | ")
        if kind in ("str", "int", "float", "bool"):
            out.append(Field(f.name, _COLUMN_OF_FIELD.get(f.name, f.name), kind, none == "None"))
    return tuple(out)


#: the fields of one protocol's block: its raw attack results and scores, plus ``r1``, the R@1 its ARS divides by
#: (the evaluated queries' R@1 aggregated as that protocol aggregates; not a leaderboard column)
SCORE_FIELDS: tuple[Field, ...] = _fields_of(ProtocolScores)
#: the record's own fields (its JSON file also holds ``protocols``: protocol -> the :data:`SCORE_FIELDS` block)
RECORD_FIELDS: tuple[Field, ...] = _fields_of(Record)
_SCORE_KEYS = ("r1",) + tuple(FIELD_OF_COLUMN[c] for c in RAW_COLUMNS + SCORE_COLUMNS)
if tuple(f.name for f in SCORE_FIELDS) != _SCORE_KEYS:  # pragma: no cover - a vocabulary/dataclass mismatch
    raise RuntimeError("ProtocolScores does not follow the metric vocabulary of robustbench_dml.columns")


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


def check_values(fields: Sequence[Field], values: Mapping[str, Any], *, where: str) -> None:
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
            bounds = columns.out_of_range(f.column, float(v)) if ok and f.column in columns.BY_KEY else None
            if bounds:
                raise UserError(f"{where}: {f.column} = {v} lies outside its range {bounds}; the file was edited or "
                                "damaged")
        if not ok:
            raise UserError(f"{where}: field {f.name!r} = {v!r} has the wrong type (expected {f.kind})")


def check_protocols(blocks: Any, *, where: str) -> None:
    if not isinstance(blocks, Mapping) or not blocks:
        raise UserError(f"{where}: a record needs at least one protocol's results")
    for p, b in blocks.items():
        if p not in P.PROTOCOLS:
            raise UserError(f"{where}: unknown protocol {p!r} (expected {' or '.join(P.PROTOCOLS)})")
        if not isinstance(b, ProtocolScores):
            raise UserError(f"{where}: protocol {p} holds {type(b).__name__}, not ProtocolScores")


def check_record_values(values: Mapping[str, Any], *, where: str) -> None:
    check_values(RECORD_FIELDS, values, where=where)
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
    if not values.get("reported") and not (isinstance(sha, str) and HEX64.match(sha)):
        raise UserError(f"{where}: a measured (not reported) record needs a 64-hex checkpoint_sha256")
    evidence = values.get("evidence_sha256")
    if evidence is not None and not (isinstance(evidence, str) and HEX64.match(evidence)):
        raise UserError(f"{where}: evidence_sha256 {evidence!r} is not 64 hex digits")
    for key in ("defense_config", "versions", "recipe"):
        v = values.get(key)
        if isinstance(v, str):
            try:
                parsed = json.loads(v)
            except json.JSONDecodeError:
                raise UserError(f"{where}: field {key!r} is not valid JSON") from None
            if key == "recipe" and not isinstance(parsed, dict):
                raise UserError(f"{where}: field 'recipe' is not a JSON object")
    budget = values.get("budget")
    if budget is not None and budget not in BUDGETS:
        raise UserError(f"{where}: budget {budget!r} is not one of {', '.join(BUDGETS)}")


# ---- one record's file ---------------------------------------------------------------------------------------
def write_record(record: Record, path: Path) -> None:
    atomic_write_bytes(Path(path), record.to_json().encode())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def read_record(path: Path) -> Record:
    """Load and validate one record file; any damage is a UserError naming the file."""
    path = Path(path)
    try:
        text = read_bounded(path, "record").decode("utf-8")
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
