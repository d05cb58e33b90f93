"""Published leaderboard rows (``reported=True``): the HM paper's table, the CA-TRIDE paper's table and RobRank's
Fashion-MNIST table.

These are literal numbers from the papers (the HM paper's comparison table, the CA-TRIDE paper's comparison and
ablation tables, RobRank's Fashion-MNIST table), so a user sees their own model beside the published ones. The HM
and CA-TRIDE rows are ResNet-18,
224x224 data, eps 8/255; RobRank's Fashion rows are c2f2, 28x28, eps 77/255 (the ``rob28`` suite). All use the
triplet loss with the N metric and were measured with the RobRank reference code, so they hold the ``robrank``
protocol only (:mod:`robustbench_dml.protocols`) and are only ever shown beside numbers of that protocol;
``steps`` is the number of training PGD steps (eta). Values a paper does not give are ``None`` (NaN in the frame).
RobRank's table prints no ERS; its ERS here is computed from its printed columns (``docs/protocol.md``, Scores).

The CA-TRIDE paper prints *resistance terms*, not raw attack results; the raw values stored here are converted back
exactly (``CA+ = term / 2``, ``CA- = 100 - term``, ``ES:R = term * R@1 / 100``, ...), so ``scoring.ars`` of a stored
row reproduces the published ARS. TMA and ES:D are not printed there (NaN), so its ERS is the published value only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_dml import scoring
from robustbench_dml.columns import ATTACK_KEYS
from robustbench_dml.protocols import ROBRANK
from robustbench_dml.leaderboard.frames import empty_frame, records_to_frame
from robustbench_dml.leaderboard.records import RAW_COLUMNS, RECORD_SCHEMA_VERSION, ProtocolScores, Record

__all__ = ["REFERENCE_SUITE", "SOURCES", "REFERENCE_ROWS", "reference_records", "reference_frame", "terms_to_raw"]

#: suite id of the reference leaderboards (``<dataset>/reference``)
REFERENCE_SUITE = "reference"

SOURCES = {
    "HM": "HM, CVPR 2022 (Zhou and Patel: Enhancing Adversarial Robustness for Deep Metric Learning), Table sota",
    "HM-abl": "HM, CVPR 2022 (Zhou and Patel: Enhancing Adversarial Robustness for Deep Metric Learning), "
              "ablation rows",
    "CA-TRIDE": "CA-TRIDE, ICML 2024 (Collapse-Aware TRIplet DEcoupling), comparison table CUB ResNet-18",
    "CA-TRIDE-abl": "CA-TRIDE, ICML 2024 (Collapse-Aware TRIplet DEcoupling), ablation table CUB ResNet-18",
    "RobRank": "RobRank, T-PAMI (Zhou et al.: Adversarial Attack and Defense in Deep Ranking), "
               "doc/dmltab-fashion.txt",
}
_YEAR = {"HM": "2022", "HM-abl": "2022", "CA-TRIDE": "2024", "CA-TRIDE-abl": "2024", "RobRank": "2024"}

def terms_to_raw(r1: float, terms: Sequence[float]) -> dict[str, float]:
    """Raw attack results from the 8 ARS resistance terms (``CA+ CA- QA+ QA- ES:R LTM GTM GTT``) and benign R@1."""
    return {k: scoring.raw_from_term(k, t, r1) for k, t in zip(scoring.ARS_TERMS, terms, strict=True)}


def _hm(dataset: str, defense: str, eta: int | None, r1: float, r2: float | None, map_: float | None,
        nmi: float | None, ers: float, raw: Sequence[float] | None = None, *, src: str = "HM",
        note: str | None = None, backbone: str = "resnet18", map10: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"src": src, "dataset": dataset, "defense": defense, "steps": eta, "R@1": r1, "R@2": r2,
                           "mAP": map_, "mAP@10": map10, "NMI": nmi, "ERS": ers, "note": note, "backbone": backbone}
    if raw is not None:
        row.update(zip(ATTACK_KEYS, raw, strict=True))
    return row


def _ca(defense: str, eta: int, r1: float, r2: float | None, map_: float | None, nmi: float | None,
        terms: Sequence[float], ers: float | None, ars: float, *, src: str = "CA-TRIDE",
        note: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"src": src, "dataset": "cub", "defense": defense, "steps": eta, "R@1": r1, "R@2": r2,
                           "mAP": map_, "NMI": nmi, "ERS": ers, "ARS": ars,
                           "note": "raw values converted back from the published resistance terms"
                           + (f"; {note}" if note else "")}
    row.update(terms_to_raw(r1, terms))
    return row


_N = None
_ROBRANK28 = {"src": "RobRank", "backbone": "c2f2", "note": "ERS computed from the published columns"}
#: literal published rows (paper column names; ``src`` keys :data:`SOURCES`)
REFERENCE_ROWS: list[dict[str, Any]] = [
    # ---- HM paper, Table "sota" ----------------------------------------------------------------------------------
    _hm("cub", "none", _N, 53.9, 66.4, 26.1, 59.5, 3.8,
        (0.0, 100.0, 0.0, 99.9, 0.883, 1.762, 0.0, 0.0, 14.1, 0.0)),
    _hm("cub", "EST[R]", 8, 37.1, 47.3, 20.0, 46.4, 7.9),
    _hm("cub", "ACT[R]", 8, 30.6, 40.1, 16.5, 45.6, 31.3),
    _hm("cub", "HM[S,LGA]", 8, 38.0, 48.3, 21.8, 49.3, 32.4),
    _hm("cub", "HM[S,LGA]&ICS", 8, 37.2, 47.8, 21.4, 48.4, 33.5),
    _hm("cub", "EST[R]", 32, 8.5, 13.0, 2.6, 25.2, 5.3),
    _hm("cub", "ACT[R]", 32, 27.5, 38.2, 12.2, 43.0, 33.9,
        (15.5, 37.7, 15.1, 32.2, 0.472, 0.821, 11.1, 9.4, 14.9, 1.0),
        note="per-attack columns from the HM paper's table; they give its ERS 33.9"),
    _hm("cub", "HM[S,LGA]", 32, 36.5, 46.7, 21.0, 48.6, 35.9),
    _hm("cub", "HM[S,LGA]&ICS", 32, 34.9, 45.0, 19.8, 47.1, 36.0,
        (15.5, 37.7, 16.6, 30.9, 0.753, 0.506, 17.9, 16.7, 27.3, 2.9)),
    _hm("cars", "none", _N, 62.5, 74.0, 23.8, 57.0, 3.6),
    _hm("cars", "EST[R]", 8, 57.1, 68.4, 30.3, 47.7, 4.4),
    _hm("cars", "ACT[R]", 8, 46.8, 58.0, 23.4, 45.5, 39.8),
    _hm("cars", "HM[S,LGA]", 8, 63.2, 73.7, 36.8, 53.5, 42.4),
    _hm("cars", "HM[S,LGA]&ICS", 8, 61.7, 72.6, 35.5, 51.8, 47.9),
    _hm("cars", "EST[R]", 32, 30.7, 41.0, 5.6, 31.8, 7.3),
    _hm("cars", "ACT[R]", 32, 43.4, 54.6, 11.8, 42.9, 38.6, note="the RobRank README prints R@2 56.5"),
    _hm("cars", "HM[S,LGA]", 32, 62.3, 72.5, 35.3, 52.7, 44.9),
    _hm("cars", "HM[S,LGA]&ICS", 32, 60.2, 71.6, 33.9, 51.2, 46.0),
    _hm("sop", "none", _N, 62.9, 68.5, 39.2, 87.4, 4.0),
    _hm("sop", "EST[R]", 8, 52.7, 58.5, 30.1, 85.7, 19.0),
    _hm("sop", "ACT[R]", 8, 45.3, 50.6, 24.1, 84.7, 49.5),
    _hm("sop", "HM[S,LGA]", 8, 49.0, 54.1, 26.4, 85.0, 61.7),
    _hm("sop", "HM[S,LGA]&ICS", 8, 48.3, 53.4, 25.7, 84.9, 61.2),
    _hm("sop", "EST[R]", 32, 46.0, 51.4, 24.5, 84.7, 31.7),
    _hm("sop", "ACT[R]", 32, 47.5, 52.6, 25.5, 84.9, 50.8),
    _hm("sop", "HM[S,LGA]", 32, 47.7, 52.7, 25.3, 84.8, 61.8),
    _hm("sop", "HM[S,LGA]&ICS", 32, 46.8, 51.7, 24.5, 84.7, 61.6),
    # ---- HM paper, other CUB rows (R@1 / ERS only) ---------------------------------------------------------------
    _hm("cub", "HM[S,M]", 8, 38.4, _N, _N, _N, 29.6, src="HM-abl"),
    _hm("cub", "HM[S,g_B]", 8, 36.5, _N, _N, _N, 33.8, src="HM-abl"),
    _hm("cub", "HM[S,0]", 8, 0.8, _N, _N, _N, 29.7, src="HM-abl", note="collapsed embedding"),
    _hm("cub", "HM[S,-gamma/2]", 8, 36.8, _N, _N, _N, 33.8, src="HM-abl"),
    _hm("cub", "HM[S,-gamma]", 8, 37.8, _N, _N, _N, 31.2, src="HM-abl"),
    _hm("cub", "HM[S,LGA] u=2.2", 8, 34.8, _N, _N, _N, 36.1, src="HM-abl"),
    _hm("cub", "HM[S,g_2]", 8, 37.4, _N, _N, _N, 33.1, src="HM-abl"),
    _hm("cub", "HM[S,g_1/2]", 8, 38.7, _N, _N, _N, 31.7, src="HM-abl"),
    _hm("cub", "HM[S,LGA]", 2, 47.5, _N, _N, _N, 11.7, src="HM-abl", note="LGA sweep"),
    _hm("cub", "HM[S,LGA]", 4, 42.7, _N, _N, _N, 20.8, src="HM-abl", note="LGA sweep"),
    _hm("cub", "HM[S,LGA]", 16, 37.0, _N, _N, _N, 34.5, src="HM-abl", note="LGA sweep"),
    _hm("sop", "HM[S,LGA]&ICS lambda=0.5", 8, 42.4, _N, _N, _N, 60.1, src="HM-abl"),
    _hm("sop", "HM[S,LGA]&ICS lambda=0.5", 32, 41.5, _N, _N, _N, 60.8, src="HM-abl"),
    # ---- CA-TRIDE paper, comparison table -----------------------------------------------------------------------
    _ca("ACT", 32, 27.5, 38.2, 12.2, 43.0, (31.0, 62.9, 30.2, 68.5, 40.3, 34.2, 54.2, 1.0), 33.9, 40.3),
    _ca("HM", 32, 34.9, 45.0, 19.8, 47.1, (31.0, 62.9, 33.2, 69.8, 51.3, 47.9, 78.2, 2.9), 36.0, 47.2),
    _ca("CA-TRIDE", 16, 34.9, 45.1, 19.6, 45.6, (32.6, 68.5, 41.8, 79.2, 61.9, 59.0, 64.8, 5.3), 38.6, 51.6),
    # ---- CA-TRIDE paper, ablation (ARS by the formula of docs/protocol.md) ----------------------------------
    _ca("CA-ANP", 16, 34.2, _N, _N, _N, (27.4, 56.7, 35.6, 73.3, 57.3, 61.1, 65.8, 5.1), _N, 47.8,
        src="CA-TRIDE-abl", note="ARS computed from the published terms"),
    _ca("CA-CAP", 16, 33.8, _N, _N, _N, (34.2, 68.0, 52.2, 70.8, 51.2, 47.6, 60.7, 3.1), _N, 48.5,
        src="CA-TRIDE-abl", note="ARS computed from the published terms"),
    # ---- RobRank, Fashion-MNIST, rob28 (its "mAP@R" is mAP@10) -----------------------------------
    _hm("fashion", "none", _N, 87.6, 92.9, 84.4, 76.6, 4.2,
        (1.1, 96.8, 0.3, 97.8, 0.990, 1.604, 0.1, 0.0, 12.6, 0.0), **_ROBRANK28, map10=83.1),
    _hm("fashion", "EST[R]", 32, 76.6, 86.0, 59.2, 61.0, 38.7,
        (14.9, 36.1, 20.9, 48.6, 0.966, 0.288, 62.0, 28.0, 20.8, 0.0), **_ROBRANK28, map10=68.2),
    _hm("fashion", "ACT[R]", 32, 78.7, 87.1, 68.8, 67.2, 63.3,
        (33.6, 14.6, 38.5, 12.1, 0.259, 0.541, 48.5, 59.5, 60.2, 0.1), **_ROBRANK28, map10=69.9),
]


def _record(row: Mapping[str, Any]) -> Record:
    key = repr((row["src"], row["dataset"], row["defense"], row["steps"], row.get("note")))
    rid = "ref-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    metric = {c: row.get(c) for c in ("R@1", "R@2", "mAP", "mAP@10", "NMI", "ERS", "ARS", *RAW_COLUMNS)}
    return Record(
        record_id=rid, dataset=row["dataset"], suite_id=REFERENCE_SUITE, suite_version=None,
        defense=row["defense"], backbone=row.get("backbone", "resnet18"), steps=row["steps"],
        r1=metric["R@1"], r2=metric["R@2"], map=metric["mAP"], map_at_r=None, map_at_10=metric["mAP@10"],
        nmi=metric["NMI"], intra_class_distance=None, inter_class_distance=None, entanglement=None,
        eligible=True, reported=True, submitter="paper", source=SOURCES[row["src"]],
        created=_YEAR[row["src"]], seed=None, device=None, num_queries=None, checkpoint_sha256=None,
        suite_hash=None, defense_config="{}", versions="{}", note=row.get("note"),
        schema_version=RECORD_SCHEMA_VERSION,
        protocols={ROBRANK: ProtocolScores(
            r1=metric["R@1"], ca_plus=metric["CA+"], ca_minus=metric["CA-"], qa_plus=metric["QA+"],
            qa_minus=metric["QA-"], tma=metric["TMA"], es_d=metric["ES:D"], es_r=metric["ES:R"], ltm=metric["LTM"],
            gtm=metric["GTM"], gtt=metric["GTT"], ers=metric["ERS"], ars=metric["ARS"], ers_lo=None, ers_hi=None,
            ars_lo=None, ars_hi=None, worst_case=None)})


def reference_records(dataset: str | None = None) -> list[Record]:
    """The published rows as records (``reported=True``), optionally only those of ``dataset`` (cub/cars/sop/
    fashion)."""
    return [_record(r) for r in REFERENCE_ROWS if dataset is None or r["dataset"] == dataset]


def reference_frame(dataset: str | None = None) -> pd.DataFrame:
    """The published rows as a typed leaderboard frame (same schema as user leaderboards; NaN = not published).

    An unknown dataset (e.g. ``digits``) gives a typed empty frame.
    """
    recs = reference_records(dataset)
    return records_to_frame(recs) if recs else empty_frame()
