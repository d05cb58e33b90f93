"""A measured record's evidence: the per-query results every one of its numbers is derived from.

A record holds aggregates (raw attack results, ERS, ARS, intervals, worst cases). Beside its file
(``records/<dataset>/<suite>/<record_id>.json``) the store keeps ``<record_id>.evidence.json.gz``: per measured
protocol the per-query results and success flags of the evaluation, and what the derivation needs besides (number
of queries, the suite's query batch for the ``robrank`` protocol's per-batch means, the bootstrap seed). The record
names that file by its sha256 (``evidence_sha256``). This module is the file's format; before a store publishes a
version, and whenever it reads its records, every measured record is derived again from its evidence
(:func:`robustbench_dml.leaderboard.derive.check_evidence`) and refused when the evidence is missing, does not hash,
or gives any other number; a paper's row has no evidence and is
checked against the rows shipped in code instead.

The file is gzip-compressed JSON with sorted keys and no timestamp, so the same evaluation gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from robustbench_dml.errors import UserError

if TYPE_CHECKING:
    from robustbench_dml.leaderboard.records import Record

__all__ = ["EVIDENCE_SCHEMA", "SUFFIX", "evidence_of", "read_evidence"]

EVIDENCE_SCHEMA = 1
#: the evidence file's name is the record id plus this
SUFFIX = ".evidence.json.gz"


def evidence_of(result: Mapping[str, Any], record_id: str, batch_size: Any) -> bytes:
    """The evidence file of the record ``record_id`` made from ``result`` (an upgraded evaluation result)."""
    payload = {"schema_version": EVIDENCE_SCHEMA, "record_id": record_id, "num_queries": result.get("num_queries"),
               "batch_size": batch_size, "seed": result.get("seed"),
               # the ARS denominator of results written before the per-query top-1 was kept
               "benign_r1": (result.get("benign") or {}).get("R@1"),
               "protocols": {p: {"per_query": b.get("per_query") or {}, "success": b.get("success") or {}}
                             for p, b in result["protocols"].items()}}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return gzip.compress(text.encode(), mtime=0)


def read_evidence(record: Record, data: bytes | None, *, where: str) -> dict[str, Any]:
    """The parsed evidence of ``record`` from its file's bytes ``data`` (None: no file); a UserError naming
    ``where`` when there is none, it does not hash to ``record.evidence_sha256``, or it is not this record's."""
    from robustbench_dml.files import READ_LIMITS, gunzip_bounded

    if record.evidence_sha256 is None or data is None:
        raise UserError(f"{where} carries no per-query evidence ({record.record_id}{SUFFIX}), so its numbers cannot "
                        "be derived and it is not published; remove it and submit its evaluation result again "
                        "(`dmlbench submit RESULT`)")
    if hashlib.sha256(data).hexdigest() != record.evidence_sha256:
        raise UserError(f"{where}: its evidence file {record.record_id}{SUFFIX} does not have the sha256 the record "
                        "names; it was changed or damaged (restore it, or remove both files and submit again)")
    try:
        ev = json.loads(gunzip_bounded(data, READ_LIMITS["evidence"]))
    except ValueError as exc:  # JSON errors are ValueErrors too
        raise UserError(f"{where}: its evidence file is damaged ({str(exc).splitlines()[0]})") from None
    if not isinstance(ev, dict) or ev.get("schema_version") != EVIDENCE_SCHEMA or \
            ev.get("record_id") != record.record_id or not isinstance(ev.get("protocols"), dict):
        raise UserError(f"{where}: its evidence file is not evidence schema {EVIDENCE_SCHEMA} of this record")
    if ev.get("num_queries") != record.num_queries:
        raise UserError(f"{where}: the record says {record.num_queries} queries, its evidence "
                        f"{ev.get('num_queries')!r}; the record was edited")
    missing = [p for p in record.protocols if not isinstance(ev["protocols"].get(p), dict)]
    if missing:
        raise UserError(f"{where}: its evidence has no {missing[0]} results; the record was edited")
    return ev
