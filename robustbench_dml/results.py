"""The evaluation result: one file holding every protocol's raw results and scores, plus provenance.

Layout (schema version 2, ``docs/protocol.md``, The result file): ``checkpoint``, ``suite``, ``seed``, ``device``,
``versions``, ``numerics`` (the float settings in force, :mod:`robustbench_dml.numerics`), ``robrank_compat``
(true only for a like-for-like run of the reference's call pattern, which measures the ``robrank`` protocol alone),
``num_queries``, ``benign`` (whole-gallery retrieval metrics, the same under every protocol) and ``protocols``: per
protocol (:mod:`robustbench_dml.protocols`) a block with ``raw`` (aggregated results, ``R@1`` included: the
denominator of ARS), ``per_query``, ``success``, ``scores`` and ``clean`` (the same measurements on the unperturbed
queries, aggregated).

A file written by :meth:`EvaluationResult.to_json` ends with ``sha256``: the digest of the rest of its content
(canonical JSON), checked whenever a result is read, so a result edited by hand (a dataset renamed, a number
changed) is refused instead of compared or published. It detects edits, not forgery: the proof of a number is
re-running the evaluation (``dmlbench reproduce``). Files without it (written before it existed) still load.

Version 1 files (one protocol, at the top level) still load: their block is filed under ``robrank`` when they
were measured with ``robrank_compat`` and under ``corrected`` otherwise. Nothing here imports torch, so the
leaderboard reads results without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError

SCHEMA_VERSION = 2
BLOCK_KEYS = ("raw", "per_query", "success", "scores", "clean")
#: the key of the content digest a written result carries
DIGEST_KEY = "sha256"


@dataclass
class EvaluationResult:
    """Everything needed to recompute the scores of every measured protocol, plus provenance.

    ``raw``, ``per_query``, ``success``, ``scores`` and ``clean`` are those of :attr:`protocol` (the default
    protocol when it was measured); :meth:`block` gives any measured protocol's.
    """

    checkpoint: dict[str, Any]
    suite: dict[str, Any]
    seed: int
    device: str
    versions: dict[str, str]
    robrank_compat: bool
    num_queries: int
    benign: dict[str, float]
    protocols: dict[str, dict[str, Any]]
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    #: the float settings in force (:mod:`robustbench_dml.numerics`); empty in files written before they were recorded
    numerics: dict[str, Any] = field(default_factory=dict)

    @property
    def eligible(self) -> bool:
        return bool(self.suite.get("eligible", False))

    @property
    def protocol(self) -> str:
        """The protocol the plain attributes show: the default when measured, else the one measured."""
        return P.DEFAULT if P.DEFAULT in self.protocols else next(iter(self.protocols))

    def block(self, protocol: str | None = None) -> dict[str, Any]:
        """``raw``, ``per_query``, ``success``, ``scores`` and ``clean`` of ``protocol`` (default :attr:`protocol`)."""
        return protocol_block(self.protocols, protocol or self.protocol)

    raw = property(lambda self: self.block()["raw"])
    per_query = property(lambda self: self.block()["per_query"])
    success = property(lambda self: self.block()["success"])
    scores = property(lambda self: self.block()["scores"])
    clean = property(lambda self: self.block()["clean"])
    #: ERS and ARS of the shown protocol (None for a partial suite that lacks an attack they need)
    ers = property(lambda self: self.scores.get("ERS"))
    ars = property(lambda self: self.scores.get("ARS"))

    def publish(self, leaderboard_dir: str | os.PathLike = "leaderboards", *, name: str | None = None,
                partial_ok: bool = False, recipe: Any = None):
        """Record this result (every score re-derived from its raw results) and publish a new version of its
        leaderboard in the store ``leaderboard_dir``; returns (record, version, added). ``name``: the submitter
        (default: the user name). ``partial_ok``: publish a partial suite's result too, marked as such.
        ``recipe``: how it was trained and evaluated (:class:`~robustbench_dml.leaderboard.recipes.Recipe`)."""
        import dataclasses
        import getpass

        from robustbench_dml.leaderboard import LeaderboardStore, record_from_result

        record = record_from_result(self.to_dict(), submitter=name or getpass.getuser())
        if recipe is not None:
            record = dataclasses.replace(record, recipe=recipe.to_json(), budget=recipe.budget)
        version, added = LeaderboardStore(leaderboard_dir).add_record(record, allow_ineligible=partial_ok)
        return record, version, added

    def engine_raw(self, part: str) -> dict[str, float] | None:
        """For a strong suite's result (:mod:`attacks.engine`), the aggregated raw results of one of its ``parts``
        (``"pgd"``: the published suite's attacks alone, same queries and targets), with the benign ``R@1``; None
        for a published suite's result."""
        engine = self.extra.get("engine")
        if not engine:
            return None
        raw = {k: v[part] for by_key in engine["parts"].values() for k, v in by_key.items() if part in v}
        raw["R@1"] = self.raw["R@1"]
        return raw

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "checkpoint": self.checkpoint, "suite": self.suite,
                "seed": self.seed, "device": self.device, "versions": self.versions,
                "robrank_compat": self.robrank_compat, "num_queries": self.num_queries, "benign": self.benign,
                "protocols": {p: {k: b[k] for k in BLOCK_KEYS} for p, b in self.protocols.items()},
                "numerics": self.numerics, "extra": self.extra}

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
        """Strict JSON text (NaN/inf, e.g. a skipped NMI, become null), written atomically to ``path`` when given."""
        from robustbench_dml.files import atomic_write_text

        d = _finite(self.to_dict())
        d[DIGEST_KEY] = content_sha256(d)
        text = json.dumps(d, indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, d: Any) -> EvaluationResult:
        """Build from a parsed result (version 1 or 2); a version 1 result becomes its one protocol's block."""
        d = upgrade(d)
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> EvaluationResult:
        """Parse JSON text, or read it from a file path."""
        text = str(source)
        where = "evaluation result"
        if not text.lstrip().startswith("{"):
            where = str(source)
            from robustbench_dml.files import read_bounded

            try:
                text = read_bounded(source, "result").decode("utf-8")
            except FileNotFoundError:
                raise UserError(f"{source} does not exist; pass the file written by `dmlbench evaluate --json`") \
                    from None
            except UnicodeDecodeError:
                raise UserError(f"{source} is not UTF-8 JSON text; pass the file written by `dmlbench evaluate "
                                "--json`") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not valid JSON ({e.msg}, line {e.lineno}); pass the file written by "
                            "`dmlbench evaluate --json`") from None
        return cls.from_dict(data)


def upgrade(d: Any) -> dict[str, Any]:
    """A parsed result in the version 2 layout (a version 1 result is converted, nothing else is accepted)."""
    if not isinstance(d, dict):
        raise UserError("evaluation result is not a JSON object; pass the file written by `dmlbench evaluate --json`")
    if DIGEST_KEY in d and d[DIGEST_KEY] != content_sha256(d):
        raise UserError("evaluation result was edited after `dmlbench evaluate` wrote it (its sha256 does not match "
                        "its content); re-run `dmlbench evaluate`")
    version = d.get("schema_version")
    if version == SCHEMA_VERSION:
        if not isinstance(d.get("protocols"), dict) or not d["protocols"]:
            raise UserError("evaluation result has no protocols; pass the file written by `dmlbench evaluate --json`")
        unknown = [p for p in d["protocols"] if p not in P.PROTOCOLS]
        if unknown:
            raise UserError(f"evaluation result has unknown protocol(s) {', '.join(map(str, unknown))}")
        return {**d, "extra": d.get("extra") or {}}
    if version == 1:
        extra = dict(d.get("extra") or {})
        block = {"raw": d.get("raw") or {}, "per_query": d.get("per_query") or {}, "success": d.get("success") or {},
                 "scores": d.get("scores") or {}, "clean": extra.pop("clean", {})}
        protocol = P.ROBRANK if d.get("robrank_compat") else P.CORRECTED
        rest = {k: v for k, v in d.items() if k not in ("raw", "per_query", "success", "scores", "extra")}
        return {**rest, "schema_version": SCHEMA_VERSION, "protocols": {protocol: block}, "extra": extra}
    raise UserError(f"evaluation result has schema_version {version!r}; this version reads 1 and {SCHEMA_VERSION}")


def content_sha256(d: dict[str, Any]) -> str:
    """The digest a written result carries: sha256 of its canonical JSON (sorted keys, no spaces), the digest
    itself left out."""
    try:
        text = json.dumps({k: v for k, v in d.items() if k != DIGEST_KEY}, sort_keys=True, separators=(",", ":"),
                          allow_nan=False)
    except (TypeError, ValueError):
        raise UserError("evaluation result holds values JSON cannot write; pass the file written by `dmlbench "
                        "evaluate --json`") from None
    return hashlib.sha256(text.encode()).hexdigest()


def protocol_block(protocols: dict[str, dict[str, Any]], protocol: str) -> dict[str, Any]:
    """One protocol's block, or a one-line UserError naming the protocols that were measured."""
    P.check(protocol)
    if protocol not in protocols:
        raise UserError(f"this result holds the {', '.join(protocols)} protocol only, not {protocol}; re-run "
                        "`dmlbench evaluate` without --robrank-compat to measure both")
    block = protocols[protocol]
    return {k: block.get(k) or {} for k in BLOCK_KEYS}


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
