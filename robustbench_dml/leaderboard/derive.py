"""A record from an evaluation result, every number re-derived from the per-query results and never trusted.

Each protocol's raw results are the aggregate of its ``per_query`` results (:func:`robustbench_dml.scoring.aggregate`:
the mean over queries, under ``robrank`` the mean of the per-batch means), ERS and ARS are computed from those, their
bootstrap intervals from the per-query results, the worst cases from the per-query ``success`` flags. A stored value
that disagrees with what it is derived from, a per-query list of the wrong length and a value outside its metric's
range (:func:`robustbench_dml.columns.out_of_range`) are refused with a message that says to re-run ``dmlbench
evaluate``. The record carries its evidence (:mod:`robustbench_dml.leaderboard.evidence`), so the store can derive it
all again before it publishes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from robustbench_dml import columns, scoring
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError
from robustbench_dml.leaderboard.evidence import evidence_of, read_evidence
from robustbench_dml.leaderboard.records import (BENIGN_COLUMNS, FIELD_OF_COLUMN, HEX64, RAW_COLUMNS,
                                                 RECORD_SCHEMA_VERSION, SCORE_FIELDS, ProtocolScores, Record,
                                                 check_protocols, check_record_values, check_submitter, check_values,
                                                 make_record_id)

__all__ = ["record_from_result", "check_evidence", "derived_raw", "derived_scores"]


def record_from_result(result: Mapping[str, Any], *, submitter: str, created: str | None = None,
                       note: str | None = None) -> Record:
    """The record of an evaluation result (schema 1 or 2; a dict, e.g. ``EvaluationResult.to_dict()`` or a parsed
    ``dmlbench evaluate --json`` file), every measured protocol's block included, every number derived again and
    its evidence attached. ``created`` defaults to today's UTC date."""
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
    if not HEX64.match(sha):
        raise UserError(f"evaluation result: checkpoint sha256 {sha!r} is not 64 hex digits")
    if not suite_hash:
        raise UserError("evaluation result: the suite hash is empty")
    check_submitter(submitter)
    seed = result.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    num_queries = result.get("num_queries")
    batch_size = (suite.get("params") or {}).get("batch_size") if isinstance(suite.get("params"), Mapping) else None
    blocks = {}
    for p, block in result["protocols"].items():
        where = f"evaluation result ({p} protocol)"
        if not isinstance(block, Mapping):
            raise UserError(f"{where}: not a JSON object; pass the file written by `dmlbench evaluate --json`")
        raw = derived_raw(block, num_queries=num_queries, batch_size=batch_size, protocol=p, where=where,
                          benign_r1=benign.get("R@1"))
        blocks[p] = derived_scores(raw, block.get("per_query"), block.get("success"), seed, where=where,
                                   stored=block.get("scores"))
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
        values[FIELD_OF_COLUMN[c]] = benign.get(c)
    for key in ("dataset", "defense", "backbone"):
        if not isinstance(values[key], str) or not values[key]:
            raise UserError(f"evaluation result: checkpoint meta lacks {key!r}; the checkpoint's meta.json "
                            "must name its dataset, backbone and defense")
    check_record_values(values, where="evaluation result")
    check_protocols(blocks, where="evaluation result")
    evidence = evidence_of(result, values["record_id"], batch_size)
    values["evidence_sha256"] = hashlib.sha256(evidence).hexdigest()
    return Record(**values, protocols=blocks, evidence=evidence)


def derived_raw(block: Mapping[str, Any], *, num_queries: Any, batch_size: Any, protocol: str, where: str,
                benign_r1: Any = None) -> dict[str, float]:
    """One protocol's raw results (``R@1`` included) derived from its ``per_query`` results; a stored ``raw``
    value must agree. ``batch_size``: the suite's query batch (the ``robrank`` protocol averages per-batch means).
    ``benign_r1``: the ARS denominator of a result written before the per-query top-1 was kept."""
    import numpy as np

    per_query = block.get("per_query")
    stored = block.get("raw") or {}
    if not isinstance(per_query, Mapping) or not isinstance(stored, Mapping):
        raise UserError(f"{where}: per_query and raw must be JSON objects; pass the file written by `dmlbench "
                        "evaluate --json`")
    if not isinstance(num_queries, int) or isinstance(num_queries, bool) or num_queries < 1:
        raise UserError(f"{where}: num_queries {num_queries!r} is not a positive integer; the file is damaged")
    if protocol == P.ROBRANK:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UserError(f"{where}: the suite's batch_size is missing, so the robrank protocol's per-batch means "
                            "cannot be derived; re-run `dmlbench evaluate`")
        sizes = [e - s for s, e in scoring.batch_ranges(num_queries, batch_size)]
    else:
        sizes = [num_queries]
    unknown = [k for k in list(per_query) + list(stored) if k not in ("R@1",) + RAW_COLUMNS]
    if unknown:
        raise UserError(f"{where}: unknown result key {unknown[0]!r}; the file is damaged")
    no_evidence = [k for k in stored if k not in per_query]
    if no_evidence:
        raise UserError(f"{where}: raw {no_evidence[0]} has no per-query results to derive it from; re-run "
                        "`dmlbench evaluate`")
    raw = {}
    for key, values in per_query.items():
        try:
            a = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (num_queries,) or not np.isfinite(a).all():
            raise UserError(f"{where}: per_query[{key!r}] is not {num_queries} finite numbers (one per query); the "
                            "file is damaged, re-run `dmlbench evaluate`")
        bad = columns.out_of_range(key, float(a.min())) or columns.out_of_range(key, float(a.max()))
        if bad:
            raise UserError(f"{where}: a per-query {key} lies outside its range {bad}; the file was edited or "
                            "damaged, re-run `dmlbench evaluate`")
        raw[key] = scoring.aggregate(a.tolist(), sizes, protocol == P.ROBRANK)
        if key in stored and not _close(stored[key], raw[key]):
            raise UserError(f"{where}: stored raw {key} {stored[key]} is not what its per-query results give "
                            f"({raw[key]:.6f}); the file was edited, re-run `dmlbench evaluate`")
    if "R@1" not in raw and isinstance(benign_r1, (int, float)) and not isinstance(benign_r1, bool):
        raw["R@1"] = float(benign_r1)
    return raw


def derived_scores(raw: Mapping[str, float], per_query: Any, success: Any, seed: int, *, where: str,
                   stored: Any = None) -> ProtocolScores:
    """One protocol's :class:`ProtocolScores` from its derived ``raw`` results: ERS/ARS, their bootstrap intervals
    (from ``per_query``) and the worst cases (from ``success``). Values in ``stored`` (a result's ``scores``) must
    agree with them."""
    stored = stored if isinstance(stored, Mapping) else {}
    values: dict[str, Any] = {f.name: raw.get(f.column) for f in SCORE_FIELDS[:1 + len(RAW_COLUMNS)]}
    for name in scoring.SCORES:
        try:
            derived = scoring.score(raw, name)
        except ValueError:
            derived = None
        kept = stored.get(name)
        if kept is not None and derived is not None and not _close(kept, derived):
            raise UserError(f"{where}: stored {name} {kept} does not match its raw results ({derived:.6f}); the "
                            "file was edited, re-run `dmlbench evaluate`")
        lo = hi = None
        interval = stored.get(f"{name}_ci")
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
    worst = stored.get("worst_case")
    by_threat: dict[str, float] = {}
    if isinstance(success, Mapping) and success:
        try:
            derived_worst = scoring.worst_case(success)
            r1 = per_query.get("R@1") if isinstance(per_query, Mapping) else None
            by_threat = scoring.worst_case_by_threat(success, None if r1 is None else [v > 0 for v in r1])
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where}: the per-query success flags are damaged ({str(exc).splitlines()[0]}); re-run "
                            "`dmlbench evaluate`") from None
        if worst is not None and not _close(worst, derived_worst):
            raise UserError(f"{where}: stored worst_case {worst} does not match its per-query successes; the file "
                            "was edited, re-run `dmlbench evaluate`")
        worst = derived_worst
    values["worst_case"] = worst
    for threat in scoring.THREATS:
        v = by_threat.get(threat)
        values[f"wc_{threat}"] = v if v is not None and math.isfinite(v) else None
    check_values(SCORE_FIELDS, values, where=where)
    return ProtocolScores(**values)


def check_evidence(record: Record, data: bytes | None, *, where: str) -> None:
    """Refuse ``record`` (a UserError naming ``where``) unless ``data``, its evidence file's bytes
    (:func:`~robustbench_dml.leaderboard.evidence.read_evidence`), gives every one of its numbers."""
    ev = read_evidence(record, data, where=where)
    seed = ev.get("seed") if isinstance(ev.get("seed"), int) else 0
    for protocol, block in record.protocols.items():
        pw = f"{where} ({protocol} protocol)"
        e = ev["protocols"][protocol]
        raw = derived_raw({"per_query": e.get("per_query")}, num_queries=ev["num_queries"],
                          batch_size=ev.get("batch_size"), protocol=protocol, where=pw, benign_r1=ev.get("benign_r1"))
        derived = derived_scores(raw, e.get("per_query"), e.get("success"), seed, where=pw)
        for f in SCORE_FIELDS:
            stored, value = getattr(block, f.name), getattr(derived, f.name)
            if (stored is None) != (value is None) or (value is not None and not _close(stored, value)):
                shown = "not measured" if value is None else f"{value:.6g}"
                raise UserError(f"{pw}: {f.column} {stored} is not what its evidence gives ({shown}); the record was "
                                "edited, restore it")


def _close(stored: Any, derived: float) -> bool:
    """A stored number equals a derived one (to the last few bits a JSON round trip and float sums may change)."""
    if not isinstance(stored, (int, float)) or isinstance(stored, bool):
        return False
    return abs(float(stored) - derived) <= 1e-6 * max(1.0, abs(derived))


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


def _json_str(obj: Any) -> str:
    return json.dumps(obj if obj is not None else {}, sort_keys=True, separators=(",", ":"), allow_nan=False)
