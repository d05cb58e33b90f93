"""A record from an evaluation result, every score re-derived from the raw results and never trusted.

ERS and ARS come from each protocol's ``raw`` results, their bootstrap intervals from its ``per_query`` results,
the worst cases from its per-query ``success`` flags; a stored value that disagrees with what it is derived from
(an edited file) is refused with a message that says to re-run ``dmlbench evaluate``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from typing import Any

from robustbench_dml import scoring
from robustbench_dml.errors import UserError
from robustbench_dml.leaderboard.records import (BENIGN_COLUMNS, FIELD_OF_COLUMN, HEX64, RAW_COLUMNS,
                                                 RECORD_SCHEMA_VERSION, SCORE_FIELDS, ProtocolScores, Record,
                                                 check_protocols, check_record_values, check_values, make_record_id)

__all__ = ["from_result"]


def from_result(result: Mapping[str, Any], *, submitter: str, created: str | None = None,
                note: str | None = None) -> Record:
    """:meth:`Record.from_evaluation`: the record of an evaluation result (schema 1 or 2), every measured protocol's
    block included. ``created`` defaults to today's UTC date."""
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
        values[FIELD_OF_COLUMN[c]] = benign.get(c)
    for key in ("dataset", "defense", "backbone"):
        if not isinstance(values[key], str) or not values[key]:
            raise UserError(f"evaluation result: checkpoint meta lacks {key!r}; the checkpoint's meta.json "
                            "must name its dataset, backbone and defense")
    check_record_values(values, where="evaluation result")
    check_protocols(blocks, where="evaluation result")
    return Record(**values, protocols=blocks)


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
    check_values(SCORE_FIELDS, values, where=where)
    return ProtocolScores(**values)


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
