"""The leaderboard frame: one row per record and protocol, the papers' column names, explicit dtypes.

Columns (:data:`COLUMNS`, derived from the record's fields): the record's identity, a ``protocol`` column, the benign
metrics, that protocol's raw attack results and scores, then the provenance. Dtypes (:data:`DTYPES`,
:data:`ARROW_SCHEMA`): ``string`` for text, nullable ``Int64`` for integers, ``float64`` (NaN = not measured / not
published) and ``bool``. Nothing is left to pandas' inference, so an empty frame is typed and pandas 3's ``str``
inference never leaks in. Version 1 parquet files (no protocol column, a ``robrank_compat`` flag) and version 2
files (no collapse diagnostic) are read through :func:`upgrade_frame`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from robustbench_dml import columns
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError
from robustbench_dml.leaderboard.records import (BENIGN_COLUMNS, RECORD_FIELDS, RECORD_SCHEMA_VERSION, SCORE_FIELDS,
                                                 WORST_COLUMNS, Field, Record)

if TYPE_CHECKING:  # pandas is imported where frames are built, so writers need only pyarrow
    import pandas as pd

__all__ = ["FIELDS", "COLUMNS", "DTYPES", "ARROW_SCHEMA", "ARROW_SCHEMA_V1", "ARROW_SCHEMA_V2", "ARROW_SCHEMA_V3",
           "ARROW_SCHEMA_V4", "READABLE_SCHEMAS", "coerce_frame", "empty_frame", "upgrade_frame", "rows_of",
           "record_rows", "records_to_frame", "sort_frame", "records_to_table"]

_BENIGN = [i for i, f in enumerate(RECORD_FIELDS) if f.column in BENIGN_COLUMNS]
_PROTOCOL_FIELD = Field("protocol", "protocol", "str", False)
#: every column of the leaderboard frame, in order: one row per (record, protocol)
FIELDS: tuple[Field, ...] = (RECORD_FIELDS[:_BENIGN[0]] + (_PROTOCOL_FIELD,) + RECORD_FIELDS[_BENIGN[0]:_BENIGN[-1] + 1]
                             + SCORE_FIELDS[1:] + RECORD_FIELDS[_BENIGN[-1] + 1:])
COLUMNS: tuple[str, ...] = tuple(f.column for f in FIELDS)

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


#: the columns schema 4 added (budget and recipe) and schema 5 (the evidence file's hash), absent from earlier files
_V4_COLUMNS = ("budget", "recipe")
_V5_COLUMNS = ("evidence_sha256",)
# version 4 files: no evidence hash; version 3 files: besides, no budget or recipe; version 2 files: besides, no
# collapse diagnostic; version 1 files: besides, no protocol column and no worst cases, a robrank_compat flag before
# checkpoint_sha256 (read by :func:`upgrade_frame`)
ARROW_SCHEMA_V4 = _arrow_schema(tuple(f for f in FIELDS if f.column not in _V5_COLUMNS), 4)
ARROW_SCHEMA_V3 = _arrow_schema(tuple(f for f in FIELDS if f.column not in _V4_COLUMNS + _V5_COLUMNS), 3)
ARROW_SCHEMA_V2 = _arrow_schema(tuple(f for f in FIELDS if f.column not in columns.SPACE_KEYS + _V4_COLUMNS
                                      + _V5_COLUMNS), 2)


def _v1_fields() -> tuple[Field, ...]:
    kept = [f for f in FIELDS if f is not _PROTOCOL_FIELD and f.column not in WORST_COLUMNS
            and f.column not in columns.SPACE_KEYS + _V4_COLUMNS + _V5_COLUMNS]
    at = [f.name for f in kept].index("checkpoint_sha256")
    return tuple(kept[:at]) + (Field("robrank_compat", "robrank_compat", "bool", False),) + tuple(kept[at:])


ARROW_SCHEMA_V1 = _arrow_schema(_v1_fields(), 1)
#: every parquet schema a leaderboard file may have, the current first
READABLE_SCHEMAS = (ARROW_SCHEMA, ARROW_SCHEMA_V4, ARROW_SCHEMA_V3, ARROW_SCHEMA_V2, ARROW_SCHEMA_V1)


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
    """A version 1 frame (one protocol per record, named by ``robrank_compat``), a version 2 frame (no collapse
    diagnostic), a version 3 frame (no budget or recipe) or a version 4 frame (no evidence hash) in the current columns (what they did not measure or
    state is missing)."""
    if all(c in df.columns for c in COLUMNS):
        return df
    out = df.copy()
    if "robrank_compat" in df.columns:
        out = out.drop(columns=["robrank_compat"])
        out["protocol"] = df["robrank_compat"].map({True: P.ROBRANK, False: P.CORRECTED}).astype(object)
        for c in WORST_COLUMNS:
            out[c] = float("nan")
    for c in columns.SPACE_KEYS:
        if c not in out.columns:
            out[c] = float("nan")
    for c in _V4_COLUMNS + _V5_COLUMNS:
        if c not in out.columns:
            out[c] = None
    out["schema_version"] = RECORD_SCHEMA_VERSION
    return out[list(COLUMNS)]


def _row_key(row: Mapping[str, Any]) -> tuple:
    ars, ers = row["ARS"], row["ERS"]
    return (ars is None, -(ars or 0.0), ers is None, -(ers or 0.0), row["record_id"], row["protocol"])


def rows_of(record: Record) -> list[dict[str, Any]]:
    """A record as leaderboard rows, one per measured protocol (column -> value; None where not measured)."""
    own = {f.column: getattr(record, f.name) for f in RECORD_FIELDS}
    return [{c: {**own, "protocol": p, **record.protocols[p].columns()}[c] for c in COLUMNS}
            for p in P.PROTOCOLS if p in record.protocols]


def record_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Every record's rows (one per protocol) in leaderboard order (the order of :func:`sort_frame`)."""
    return sorted((row for r in records for row in rows_of(r)), key=_row_key)


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
