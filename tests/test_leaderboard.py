"""Records, the versioned store (concurrency, crash safety, damage detection), reference rows, tables and plots."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from robustbench_dml import scoring
from robustbench_dml.errors import UserError
from robustbench_dml import files as files_mod
from robustbench_dml.leaderboard import frames as frames_mod
from robustbench_dml.leaderboard import (COLUMNS, DTYPES, LeaderboardStore, Record, empty_frame, frames_concat,
                                         record_from_result,
                                         plot_eps_curve, plot_resistance, read_record, reference_frame,
                                         reference_records, render)
from robustbench_dml.leaderboard import records as records_mod
from robustbench_dml.leaderboard.evidence import SUFFIX
from robustbench_dml.leaderboard.records import RECORD_SCHEMA_VERSION, write_record
from robustbench_dml.leaderboard.store import frame_to_parquet_bytes, parquet_bytes_to_frame
from robustbench_dml.leaderboard.tables import best_marks, table_frame

SUITE_HASH = hashlib.sha256(b"rob28-v1").hexdigest()


def make_eval(i: int, *, eligible: bool = True, dataset: str = "digits", protocols=("corrected",)) -> dict:
    """A synthetic evaluation result in the layout of docs/protocol.md; model i gets distinct numbers, and the
    robrank protocol's GTM/LTM/ES:D differ from the corrected ones as the quirks make them."""
    rng = np.random.default_rng(i)
    raw = {"CA+": 10 + 3 * i, "CA-": 60 - 4 * i, "QA+": 8 + 2 * i, "QA-": 55 - 3 * i, "TMA": 0.8 - 0.05 * i,
           "ES:D": 0.9 - 0.05 * i, "ES:R": 20 + i, "LTM": 15 + i, "GTM": 25 + 2 * i, "GTT": 1.0 + i, "R@1": 90.0 - i}
    raw = {k: float(v + rng.uniform(0, 0.01)) for k, v in raw.items()}
    blocks = {}
    for p in protocols:
        r = dict(raw) if p == "corrected" else {**raw, "GTM": raw["GTM"] + 30, "LTM": raw["LTM"] + 10,
                                                 "ES:D": raw["ES:D"] / 2}
        # per-query results whose means are the raw values (half the queries a little below, half above)
        per_query = {k: [v - d, v + d] * 32 for k, v in r.items() for d in [0.05 if k in ("TMA", "ES:D") else 1.0]}
        blocks[p] = {"raw": r, "per_query": per_query, "clean": {},
                     "success": {"CA+": [j % 8 == 0 for j in range(64)], "GTT": [bool(j % (i + 2)) for j in range(64)]},
                     "scores": {"ERS": scoring.ers(r), "ARS": scoring.ars(r),
                                "ERS_ci": list(scoring.bootstrap_ci(per_query, score="ERS", seed=0)),
                                "ARS_ci": list(scoring.bootstrap_ci(per_query, score="ARS", seed=0))}}
    return {
        "schema_version": 2,
        "checkpoint": {"sha256": hashlib.sha256(f"model-{i}".encode()).hexdigest(), "path": f"runs/m{i}",
                       "meta": {"dataset": dataset, "backbone": "c2f2", "defense": "ca_tride",
                                "defense_config": {"lam": 10.0, "threat": {"eps": 0.3, "steps": 16}}}},
        "suite": {"id": "rob28", "version": 1, "hash": SUITE_HASH, "params": {"batch_size": 32},
                  "overrides": {"eps": None, "attacks": None, "max_queries": None}, "eligible": eligible},
        "seed": 0, "device": "cpu", "versions": {"robustbench_dml": "0.1.0", "torch": "2"},
        "robrank_compat": protocols == ("robrank",), "num_queries": 64,
        "benign": {"R@1": raw["R@1"], "R@2": 95.0, "mAP": 70.0 + i, "MAP@R": 60.0, "mAP@10": 80.0, "NMI": 75.0},
        "protocols": blocks,
    }


def make_record(i: int, **kw) -> Record:
    return record_from_result(make_eval(i, **kw), submitter=f"user{i}", created="2025-01-01")


# ---- records -----------------------------------------------------------------------------------------------------
def test_record_from_result_fields():
    ev = make_eval(2)
    rec = record_from_result(ev, submitter="alice", created="2025-01-02")
    sha = ev["checkpoint"]["sha256"]
    assert rec.record_id == f"{sha[:16]}-{SUITE_HASH[:12]}"
    assert (rec.dataset, rec.suite_id, rec.suite_version, rec.backbone, rec.defense) == \
        ("digits", "rob28", 1, "c2f2", "ca_tride")
    assert rec.steps == 16 and rec.seed == 0 and rec.device == "cpu" and rec.eligible and not rec.reported
    block = ev["protocols"]["corrected"]
    raw = block["raw"]
    assert rec.ers == pytest.approx(scoring.ers(raw)) and rec.ars == pytest.approx(scoring.ars(raw))
    assert rec.scores().ca_minus == raw["CA-"] and rec.r1 == ev["benign"]["R@1"] and rec.nmi == 75.0
    assert json.loads(rec.defense_config)["lam"] == 10.0
    s = rec.scores("corrected")
    # intervals re-derived from the per-query results; the worst case from the successes: query j is broken by
    # GTT when j % 4 != 0 (48 of 64) or by CA+ when j % 8 == 0 (8 more): 56 of 64
    assert (s.ers_lo, s.ars_hi) == (block["scores"]["ERS_ci"][0], block["scores"]["ARS_ci"][1])
    assert s.worst_case == 87.5
    # JSON round trip
    again = Record.from_json_dict(json.loads(rec.to_json()))
    assert again == rec


def test_per_threat_worst_cases_are_derived_from_the_successes():
    ev = make_eval(1)
    block = ev["protocols"]["corrected"]
    T, F = True, False
    pattern = {"CA+": [T, F, F, F], "CA-": [F, F, F, T], "QA+": [F, F, F, F], "QA-": [F, T, F, F],
               "ES": [F, F, F, F], "LTM": [T, F, F, F], "GTM": [F, F, F, T], "GTT": [T, T, T, T]}
    block["success"] = {k: v * 16 for k, v in pattern.items()}
    block["per_query"]["R@1"] = [100.0, 100.0, 0.0, 100.0] * 16     # query 2's clean top-1 is already wrong
    block["raw"]["R@1"], block["scores"] = 75.0, {}
    s = record_from_result(ev, submitter="x").scores()
    assert s.worst_case == 100.0                                      # GTT breaks everything: ranks nothing
    assert (s.wc_candidate, s.wc_query) == (50.0, 25.0)               # queries {0, 3} and {1}
    assert s.wc_recall == pytest.approx(100 * 0.5 / 0.75)             # {0, 3} of the 3 correct ones
    row = frames_mod.rows_of(record_from_result(ev, submitter="x"))[0]
    assert (row["WC:candidate"], row["WC:query"]) == (50.0, 25.0)
    block["scores"]["worst_case"] = 80.0                              # an edited worst case is refused
    with pytest.raises(UserError, match="worst_case"):
        record_from_result(ev, submitter="x")


def test_record_carries_both_protocols_and_rows_name_them():
    ev = make_eval(2, protocols=("corrected", "robrank"))
    rec = record_from_result(ev, submitter="alice", created="2025-01-02")
    assert list(rec.protocols) == ["corrected", "robrank"] and rec.protocol == "corrected"
    for p in ("corrected", "robrank"):
        raw = ev["protocols"][p]["raw"]
        assert rec.scores(p).ars == pytest.approx(scoring.ars(raw)) and rec.scores(p).gtm == raw["GTM"]
    assert rec.scores("robrank").ars > rec.scores("corrected").ars   # the quirks flatter GTM and LTM
    rows = frames_mod.rows_of(rec)
    assert [r["protocol"] for r in rows] == ["corrected", "robrank"]
    assert rows[0]["GTM"] == ev["protocols"]["corrected"]["raw"]["GTM"]
    assert rows[1]["GTM"] == ev["protocols"]["robrank"]["raw"]["GTM"]
    assert rows[0]["R@1"] == rows[1]["R@1"] == ev["benign"]["R@1"]
    assert Record.from_json_dict(json.loads(rec.to_json())) == rec
    frame = frames_mod.records_to_frame([rec])
    assert frame["protocol"].tolist() == ["robrank", "corrected"]          # ARS desc
    edited = make_eval(2, protocols=("corrected", "robrank"))
    edited["protocols"]["robrank"]["scores"]["ARS"] += 1                   # an edit in either block is refused
    with pytest.raises(UserError, match="robrank protocol"):
        record_from_result(edited, submitter="x")


def test_version_1_records_and_results_read_as_their_one_protocol(tmp_path):
    rec = make_record(1)
    v1 = {k: v for k, v in rec.to_json_dict().items() if k != "protocols"}
    v1.update(rec.scores().to_json_dict(), r1=rec.r1, schema_version=1, robrank_compat=True)
    path = tmp_path / f"{rec.record_id}.json"
    path.write_text(json.dumps(v1))
    old = read_record(path)
    assert list(old.protocols) == ["robrank"] and old.scores("robrank") == rec.scores("corrected")
    path.write_text(json.dumps({**v1, "robrank_compat": False}))
    assert read_record(path) == dataclasses.replace(rec, evidence_sha256=None)  # written before evidence files
    # a version 1 evaluation result: one protocol at the top level
    ev = make_eval(1)
    block = ev.pop("protocols")["corrected"]
    ev.update(schema_version=1, raw=block["raw"], per_query=block["per_query"], success=block["success"],
              scores=block["scores"])
    assert record_from_result(ev, submitter="user1", created="2025-01-01") == rec


def test_record_refuses_edited_scores_and_bad_input():
    ev = make_eval(1)
    ev["protocols"]["corrected"]["scores"]["ERS"] += 0.5
    with pytest.raises(UserError, match="does not match its raw results"):
        record_from_result(ev, submitter="x")
    ev = make_eval(1)
    ev["checkpoint"]["sha256"] = "abc"
    with pytest.raises(UserError, match="64 hex"):
        record_from_result(ev, submitter="x")
    with pytest.raises(UserError, match="submitter"):
        record_from_result(make_eval(1), submitter=" \n")
    ev = make_eval(1)
    del ev["suite"]
    with pytest.raises(UserError, match="suite"):
        record_from_result(ev, submitter="x")


def test_damaged_record_file_names_the_file(tmp_path):
    rec = make_record(0)
    path = tmp_path / f"{rec.record_id}.json"
    write_record(rec, path)
    assert read_record(path) == rec
    good = path.read_text()
    cases = {
        "truncated": good[: len(good) // 2],
        "nan": good.replace(f'"ers": {json.dumps(rec.ers)}', '"ers": NaN'),
        "schema": good.replace(f'"schema_version": {RECORD_SCHEMA_VERSION}', '"schema_version": 99'),
        "protocol": good.replace('"corrected": {', '"robrank2": {'),
        "type": good.replace('"eligible": true', '"eligible": "yes"'),
        "missing": json.dumps({k: v for k, v in json.loads(good).items() if k != "dataset"}),
    }
    for name, text in cases.items():
        assert text != good, name
        path.write_text(text)
        with pytest.raises(UserError, match=str(path).replace("\\", "\\\\")):
            read_record(path)


# ---- store basics ------------------------------------------------------------------------------------------------
def test_add_load_resubmit_and_diff(tmp_path):
    store = LeaderboardStore(tmp_path)
    assert store.versions("digits", "rob28") == []
    empty = store.load("digits", "rob28")
    assert empty.empty and dict(empty.dtypes) == DTYPES
    r0, r1 = make_record(0), make_record(3)
    assert store.add_record(r0) == (1, True)
    assert store.add_record(r0) == (1, False)                        # resubmission: nothing new
    again = record_from_result(make_eval(0), submitter="someone else", created="2030-01-01")
    assert store.add_record(again) == (1, False)                     # same checkpoint + suite -> same record id
    assert store.add_record(r1) == (2, True)
    assert store.versions("digits", "rob28") == [1, 2]
    df = store.load("digits", "rob28")
    assert list(df.columns) == list(COLUMNS) and dict(df.dtypes) == DTYPES
    assert df["record_id"].tolist() == [r1.record_id, r0.record_id]    # ARS desc (model 3 is more robust)
    assert df["ARS"].is_monotonic_decreasing
    assert df.loc[1, "submitter"] == "user0"                          # the first record is kept
    assert len(store.load("digits", "rob28", 1)) == 1
    m = store.manifest("digits", "rob28", 2)
    assert m["rows"] == 2 and set(m["records"]) == {r0.record_id, r1.record_id}
    assert m["parquet_sha256"] == hashlib.sha256(store.parquet_path("digits", "rob28", 2).read_bytes()).hexdigest()
    assert m["previous"] == 1 and m["package_version"]
    rec_path = store.record_path(r0)
    assert m["records"][r0.record_id] == hashlib.sha256(rec_path.read_bytes()).hexdigest()
    d = store.diff("digits", "rob28", 1, 2)
    assert d["change"].tolist() == ["added"] and d["record_id"].tolist() == [r1.record_id]
    assert store.diff("digits", "rob28", 2, 1)["change"].tolist() == ["removed"]
    assert store.verify("digits", "rob28") == [1, 2]
    assert store.leaderboards() == [("digits", "rob28")]
    with pytest.raises(UserError, match="version"):
        store.load("digits", "rob28", 3)


def test_ineligible_result_refused(tmp_path):
    store = LeaderboardStore(tmp_path)
    with pytest.raises(UserError, match="not eligible"):
        store.add_record(make_record(0, eligible=False))
    assert store.versions("digits", "rob28") == []
    assert not store.records_dir("digits", "rob28").exists()
    assert store.add_record(make_record(0, eligible=False), allow_ineligible=True) == (1, True)


def test_empty_leaderboard_dtype_round_trip():
    df = empty_frame()
    data = frame_to_parquet_bytes(df)
    schema = pq.read_schema(io.BytesIO(data))
    assert "null" not in {str(f.type) for f in schema}
    back = parquet_bytes_to_frame(data)
    pd.testing.assert_frame_equal(back, df)
    assert dict(back.dtypes) == DTYPES
    assert str(back["defense"].dtype) == str(pd.StringDtype()) and str(back["steps"].dtype) == "Int64"


def test_full_frame_round_trip_keeps_values():
    df = frames_concat([reference_frame("cub"), reference_frame("sop")])
    back = parquet_bytes_to_frame(frame_to_parquet_bytes(df))
    pd.testing.assert_frame_equal(back, df)
    assert back["steps"].isna().sum() == 2 and back["source"].notna().all()


# ---- concurrency -------------------------------------------------------------------------------------------------
@pytest.mark.ddp
def test_eight_concurrent_submissions(tmp_path):
    store = LeaderboardStore(tmp_path)
    recs = [make_record(i) for i in range(8)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=store.add_record, args=(r,)) for r in recs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert store.versions("digits", "rob28") == list(range(1, 9))
    seen: set[str] = set()
    for v in range(1, 9):
        df = store.load("digits", "rob28", v)                        # each validated against its manifest
        ids = set(df["record_id"])
        assert len(df) == v and len(ids) == v and seen < ids           # append-only history, no duplicates
        assert store.manifest("digits", "rob28", v)["previous"] == (v - 1 or None)
        seen = ids
    assert seen == {r.record_id for r in recs}
    assert store.verify("digits", "rob28") == list(range(1, 9))


# ---- crash safety ------------------------------------------------------------------------------------------------
def _crash_on(monkeypatch, suffix: str):
    real = files_mod._replace

    def replace(src, dst):
        if str(dst).endswith(suffix):
            assert Path(src).exists() and Path(src).stat().st_size > 0      # the temp file was written
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(files_mod, "_replace", replace)


@pytest.mark.parametrize("suffix", ["v2.parquet", "v2.manifest.json", "latest"])
def test_crash_mid_write_keeps_previous_version(tmp_path, monkeypatch, suffix):
    store = LeaderboardStore(tmp_path)
    r0, r1 = make_record(0), make_record(1)
    store.add_record(r0)
    before = store.load("digits", "rob28")
    _crash_on(monkeypatch, suffix)
    with pytest.raises(OSError, match="simulated crash"):
        store.add_record(r1)
    board = store.board_dir("digits", "rob28")
    assert store.versions("digits", "rob28") == [1]
    pd.testing.assert_frame_equal(store.load("digits", "rob28"), before)
    assert not [p for p in board.iterdir() if p.name.endswith(".tmp")]           # temp files cleaned up
    monkeypatch.undo()
    # the next writer publishes v2 (overwriting any unpublished v2 file) with both rows
    assert store.add_record(r1) == (2, True)
    assert len(store.load("digits", "rob28")) == 2 and store.verify("digits", "rob28") == [1, 2]


# ---- damage detection --------------------------------------------------------------------------------------------
def _store_with_two(tmp_path) -> LeaderboardStore:
    store = LeaderboardStore(tmp_path)
    store.add_record(make_record(0))
    store.add_record(make_record(1))
    return store


def test_damaged_parquet_is_a_clear_error(tmp_path):
    store = _store_with_two(tmp_path)
    path = store.parquet_path("digits", "rob28", 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its manifest"):
        store.load("digits", "rob28")
    assert len(store.load("digits", "rob28", 1)) == 1                 # older versions still load
    # garbage whose hash the manifest matches: still refused, as unreadable parquet
    path.write_bytes(b"PAR1 not really parquet PAR1")
    mpath = store.manifest_path("digits", "rob28", 2)
    m = json.loads(mpath.read_text())
    m["parquet_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    mpath.write_text(json.dumps(m))
    with pytest.raises(UserError, match="not a readable parquet"):
        store.load("digits", "rob28")


def test_manifest_hash_mismatch_and_damage(tmp_path):
    store = _store_with_two(tmp_path)
    mpath = store.manifest_path("digits", "rob28", 2)
    good = mpath.read_text()
    m = json.loads(good)
    m["parquet_sha256"] = "0" * 64
    mpath.write_text(json.dumps(m))
    with pytest.raises(UserError, match="does not match its manifest"):
        store.load("digits", "rob28")
    mpath.write_text("{not json")
    with pytest.raises(UserError, match="manifest .* is damaged"):
        store.load("digits", "rob28")
    mpath.write_text(good)
    m = json.loads(good)
    m["rows"] = 3
    mpath.write_text(json.dumps(m))
    with pytest.raises(UserError, match="rows"):
        store.load("digits", "rob28")
    mpath.write_text(good)
    store.load("digits", "rob28")
    store._pointer_path("digits", "rob28").write_text("garbage")
    with pytest.raises(UserError, match="pointer"):
        store.load("digits", "rob28")


def test_damaged_record_blocks_publishing(tmp_path):
    store = _store_with_two(tmp_path)
    rpath = store.record_path(make_record(0))
    rpath.write_text(rpath.read_text()[:-20])
    with pytest.raises(UserError, match=str(rpath)):
        store.add_record(make_record(2))
    assert store.versions("digits", "rob28") == [1, 2]
    with pytest.raises(UserError, match="does not match the manifest|damaged"):
        store.verify("digits", "rob28")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_record_is_published_only_with_evidence_that_gives_every_number(tmp_path, capsys):
    """What the issue's probe did: record files placed or edited in a store, then `leaderboard rebuild` and `show`."""
    from robustbench_dml.cli.main import main

    store = _store_with_two(tmp_path)
    lb = ["--dataset", "digits", "--leaderboard-dir", str(tmp_path)]
    good = make_record(2)
    rdir = store.records_dir("digits", "rob28")
    path, evidence = store.record_path(good), store.evidence_path(good)
    shipped = good.to_json_dict()

    def edited(**change) -> dict:
        d = json.loads(json.dumps(shipped))
        block = d["protocols"]["corrected"]
        block.update(change)
        raw = {f.column: block[f.name] for f in records_mod.SCORE_FIELDS[:11]}
        block["ers"], block["ars"] = scoring.ers(raw), scoring.ars(raw)  # consistent with the edited raw value
        return d

    cases = {  # name -> (record JSON, evidence bytes or None, what the refusal names)
        "R@1 150": ({**shipped, "r1": 150.0}, good.evidence, "R@1 = 150.0 lies outside its range"),
        "CA+ 0.8 -> 99.9": (edited(ca_plus=99.9), good.evidence, "CA\\+ 99.9 is not what its evidence gives"),
        "no evidence file": (shipped, None, "carries no per-query evidence"),
        "schema 4, no evidence": ({**{k: v for k, v in shipped.items() if k != "evidence_sha256"},
                                   "schema_version": 4}, good.evidence, "carries no per-query evidence"),
        "evidence edited": (shipped, gzip.compress(gzip.decompress(good.evidence).replace(b'"seed":0', b'"seed":1'),
                                                   mtime=0), "does not have the sha256"),
    }
    before = _tree(tmp_path)
    for name, (record_json, evidence_bytes, message) in cases.items():
        path.write_text(json.dumps(record_json))
        if evidence_bytes is not None:
            evidence.write_bytes(evidence_bytes)
        assert main(["leaderboard", "rebuild", *lb]) == 2, name
        assert re.search(message, capsys.readouterr().err), name
        assert store.versions("digits", "rob28") == [1, 2], name           # nothing published
        path.unlink()
        evidence.unlink(missing_ok=True)
        assert _tree(tmp_path) == before, name                            # nothing written or removed
    # the same record with its evidence is published, and `show` checks every published record and evidence hash
    store.add_record(good)
    assert main(["leaderboard", "show", *lb]) == 0
    capsys.readouterr()
    published = store.evidence_path(make_record(0))
    kept = published.read_bytes()
    published.write_bytes(good.evidence)
    assert main(["leaderboard", "show", *lb]) == 2
    assert "does not have the sha256 its record names" in capsys.readouterr().err
    published.unlink()
    assert main(["leaderboard", "show", *lb]) == 2
    published.write_bytes(kept)
    assert main(["leaderboard", "show", *lb]) == 0
    # a record that holds no evidence is not published by the library either
    with pytest.raises(UserError, match="no per-query evidence"):
        LeaderboardStore(tmp_path / "other").add_record(dataclasses.replace(good, evidence=None))
    assert sorted(p.name for p in rdir.glob("*")) == sorted(
        f"{r.record_id}{suffix}" for r in (make_record(0), make_record(1), good) for suffix in (".json", SUFFIX))


def test_wrong_schema_parquet_refused(tmp_path):
    df = empty_frame().drop(columns=["note"])
    buf = io.BytesIO()
    df.to_parquet(buf)
    with pytest.raises(UserError, match="schema"):
        parquet_bytes_to_frame(buf.getvalue())


# ---- reference rows ----------------------------------------------------------------------------------------------
def test_reference_rows_recompute_published_scores():
    checked = {"ERS": 0, "ARS": 0}
    for rec in reference_records():
        assert rec.reported and rec.source and rec.checkpoint_sha256 is None
        raw = rec.raw()
        if rec.ers is not None and all(k in raw for k in scoring.ERS_KEYS):
            assert abs(scoring.ers(raw) - rec.ers) <= 0.1, rec
            checked["ERS"] += 1
        if rec.ars is not None and all(k in raw for k in scoring.ARS_KEYS):
            assert abs(scoring.ars(raw) - rec.ars) <= 0.1, rec
            checked["ARS"] += 1
    assert checked == {"ERS": 6, "ARS": 5}   # HM none / ACT / HM&ICS, RobRank Fashion 3; CA-TRIDE table 3 + abl. 2


def test_reference_frame_schema_and_content():
    cub = reference_frame("cub")
    assert dict(cub.dtypes) == DTYPES and cub["reported"].all()
    hm = cub[(cub["defense"] == "HM[S,LGA]&ICS") & (cub["steps"] == 32)].iloc[0]
    assert (hm["R@1"], hm["R@2"], hm["mAP"], hm["NMI"], hm["ERS"]) == (34.9, 45.0, 19.8, 47.1, 36.0)
    assert np.isnan(hm["MAP@R"]) and np.isnan(hm["ARS"])
    assert cub.iloc[0]["defense"] == "CA-TRIDE"                       # best ARS first
    assert len(reference_frame("sop")) == 11 and len(reference_frame("cars")) == 9
    assert reference_frame("digits").empty and dict(reference_frame("digits").dtypes) == DTYPES
    fashion = reference_frame("fashion").set_index("defense")
    assert list(fashion.index) == ["ACT[R]", "EST[R]", "none"] and (fashion["backbone"] == "c2f2").all()
    assert tuple(fashion.loc["ACT[R]", ["R@1", "mAP@10", "TMA", "ES:D", "ERS"]]) == (78.7, 69.9, 0.259, 0.541, 63.3)


def test_shipped_reference_leaderboard_matches_code():
    root = Path(__file__).resolve().parents[1] / "leaderboards" / "reference"
    store = LeaderboardStore(root)
    assert store.leaderboards() == [("cars", "reference"), ("cub", "reference"), ("fashion", "reference"),
                                    ("sop", "reference")]
    for ds, _ in store.leaderboards():
        pd.testing.assert_frame_equal(store.load(ds, "reference"), reference_frame(ds))


def test_a_version_1_store_still_loads_as_the_robrank_protocol():
    """A copy of the shipped Fashion reference leaderboard as version 1 wrote it (flat records with robrank_compat,
    a parquet without a protocol column) reads as today's rows, checks included."""
    root = Path(__file__).resolve().parent / "data" / "v1_store"
    assert json.loads((root / "fashion/reference/v1.manifest.json").read_text())["record_schema_version"] == 1
    store = LeaderboardStore(root)
    assert store.verify("fashion", "reference") == [1]
    pd.testing.assert_frame_equal(store.load("fashion", "reference"), reference_frame("fashion"))
    by_id = lambda records: sorted(records, key=lambda r: r.record_id)  # noqa: E731
    assert by_id(store.records("fashion", "reference")) == by_id(reference_records("fashion"))


# ---- tables ------------------------------------------------------------------------------------------------------
def _board(tmp_path, protocols=("corrected",)) -> tuple[pd.DataFrame, list[Record]]:
    store = LeaderboardStore(tmp_path)
    recs = [make_record(i, protocols=protocols) for i in (0, 1, 4)]
    store.add_records(recs)
    return store.load("digits", "rob28"), recs


def test_best_marks_direction_and_ci_ties(tmp_path):
    df, recs = _board(tmp_path)          # rows: model 4, 1, 0 (ARS desc)
    table = table_frame(df)
    marks = best_marks(table, ["CA+", "CA-", "ERS", "ARS", "R@1"])
    assert marks["CA+"] == {0}           # higher CA+ is better: model 4
    assert marks["CA-"] == {0}           # lower CA- is better: model 4 has the lowest
    assert marks["R@1"] == {2}           # model 0 has the highest benign R@1
    # ERS gap between models 4 and 1 is ~8.9 with CIs of +-1: only the best is marked; widen model 1's CI -> tie
    assert marks["ERS"] == {0}
    wide = df.copy()
    wide.loc[1, ["ERS_lo", "ERS_hi"]] = [wide.loc[1, "ERS"] - 9, wide.loc[1, "ERS"] + 9]
    assert best_marks(table_frame(wide), ["ERS"])["ERS"] == {0, 1}
    terms = table_frame(df, values="terms")
    assert terms.loc[0, "CA-"] == pytest.approx(100 - df.loc[0, "CA-"])
    assert best_marks(terms, ["CA-"], values="terms")["CA-"] == {0}


def test_render_markdown_latex_html(tmp_path):
    df, recs = _board(tmp_path)
    df.loc[0, "defense"] = "HM[S,LGA]&ICS_v2 50%"
    md = render(df, "md", highlight_record_id=recs[1].record_id)
    caption, blank, *lines = md.strip().splitlines()
    assert caption.startswith("digits; rob28 v1 (eps 77/255); Protocol: corrected (") and blank == ""
    assert caption.endswith("; ranked by ARS, then ERS (higher is more robust)")  # the rows are in board order
    assert lines[0].startswith("| # | Defense") and "| ERS | ARS |" in lines[0]
    assert len(lines) == 2 + 3 and all(line.count("|") == lines[0].count("|") for line in lines[2:])
    assert "→" in lines[3] and f"**{df.loc[0, 'ARS']:.1f}**" in lines[2]
    tex = render(df, "latex", standalone=True)
    assert "Protocol: corrected" in tex
    assert render(df, "latex").startswith("% digits; rob28 v1 (eps 77/255); Protocol: corrected")
    # rows not in leaderboard order do not claim the ranking
    assert "ranked by" not in render(df.iloc[::-1].reset_index(drop=True), "md").splitlines()[0]
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\usepackage{booktabs}" in tex and r"HM[S,LGA]\&ICS\_v2 50\%" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    ncols = tex.split(r"\begin{tabular}{")[1].split("}")[0]
    assert all(row.count(" & ") == len(ncols) - 1 and row.endswith(r"\\") for row in body)
    page = render(df, "html", highlight_record_id=recs[0].record_id, title="digits <rob28>")
    _check_html(page)
    assert "digits &lt;rob28&gt;; digits; rob28 v1 (eps 77/255); Protocol: corrected" in page and 'class="highlight"' in page and "HM[S,LGA]&amp;ICS" in page
    with pytest.raises(ValueError, match="format"):
        render(df, "xlsx")
    terms = render(df, "md", values="terms", columns=("TMA", "ES:D", "ARS"))
    tma_term = 100 * (1 - df.loc[0, "TMA"])
    assert f"{tma_term:.1f}" in terms and f"{tma_term:.3f}" not in terms    # terms are 0-100: one decimal
    assert f"{df.loc[0, 'TMA']:.3f}" in render(df, "md", columns=("TMA", "ES:D"))


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_render_empty_leaderboard(fmt):
    text = render(empty_frame(), fmt)
    assert "ARS" in text
    if fmt == "html":
        _check_html(text, rows=False)


class _Balance(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack)
        self.stack.pop()


def _check_html(page: str, rows: bool = True) -> None:
    assert page.lstrip().lower().startswith("<!doctype html>")
    p = _Balance()
    p.feed(page)
    p.close()
    assert p.stack == [] and {"html", "head", "body", "table", "thead", "tbody", "th"} <= set(p.tags)
    assert ("td" in p.tags) == rows


def test_csv_reads_back_as_shown_without_float_noise(tmp_path):
    df, _ = _board(tmp_path, protocols=("robrank",))
    both = frames_concat([df, reference_frame("cub")])
    text = render(both, "csv")
    back = pd.read_csv(io.StringIO(text))
    expected = table_frame(both)
    numeric = [c for c in expected.columns if expected[c].dtype == "float64"]
    assert "ERS" in numeric and "ERS_lo" in numeric
    for c in numeric:  # each column at its decimals: TMA and ES:D three, the rest one, intervals as their score
        digits = 3 if c in ("TMA", "ES:D") else 1
        assert back[c].tolist() == pytest.approx(expected[c].round(digits).tolist(), nan_ok=True, abs=1e-12), c
        written = [cell for line in text.splitlines()[1:] for cell in line.split(",")]
    assert not any("." in cell and len(cell.split(".")[1]) > 3 for cell in written if cell.replace(".", "").isdigit())
    assert set(back["dataset"]) == {"digits", "cub"} and set(back["suite"]) == {"rob28", "reference"}
    assert back["defense"].tolist() == expected["defense"].tolist()
    assert back["record_id"].tolist() == both["record_id"].tolist()
    assert set(back["protocol"]) == {"robrank"}


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_a_corrected_row_is_never_placed_beside_published_rows(tmp_path, fmt):
    board, recs = _board(tmp_path, protocols=("corrected", "robrank"))
    assert set(board["protocol"]) == {"corrected", "robrank"}           # the store holds both protocols
    with pytest.raises(UserError, match="mix the corrected and robrank protocols"):
        render(frames_concat([board, reference_frame("cub")]), fmt)      # the papers' rows are robrank rows
    with pytest.raises(UserError, match="mix"):
        render(board, fmt)                                               # and so are a record's two rows
    corrected = board[board["protocol"] == "corrected"]
    with pytest.raises(UserError, match="mix"):
        render(frames_concat([corrected, reference_frame("cub").head(1)]), fmt)
    with pytest.raises(UserError, match="mix"):
        plot_resistance(frames_concat([corrected, reference_frame("cub")]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    robrank = board[board["protocol"] == "robrank"]
    text = render(frames_concat([robrank, reference_frame("cub")]), fmt)
    assert "51.6" in text                                                # CA-TRIDE's published ARS, beside ours


# ---- plots -------------------------------------------------------------------------------------------------------
def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024


def test_plots_write_pngs(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    df, _ = _board(tmp_path, protocols=("robrank",))
    rows = frames_concat([df, reference_frame("cub").head(2)])
    assert _is_png(plot_resistance(rows, tmp_path / "res.png"))
    assert _is_png(plot_resistance(rows, tmp_path / "res_ers.png", score="ERS"))
    curves = {f"model {i}": [(e / 255, make_eval(i + e)["protocols"]["corrected"]["raw"]) for e in (0, 8, 16)]
              for i in range(2)}
    assert _is_png(plot_eps_curve(curves, tmp_path / "eps.png", protocol="corrected"))
    assert _is_png(plot_eps_curve(curves, tmp_path / "eps_ca.png", key="CA+"))
    with pytest.raises(ValueError, match="XYZ"):
        plot_eps_curve(curves, tmp_path / "bad.png", key="XYZ")
    assert matplotlib.get_backend() == backend          # the user's backend is left alone


def test_the_collapse_diagnostic_is_a_leaderboard_column_and_older_files_read_as_not_measured(tmp_path):
    import pyarrow as pa

    from robustbench_dml.leaderboard.frames import ARROW_SCHEMA_V2, records_to_frame

    ev = make_eval(1)
    ev["benign"].update(intra_class_distance=0.07, inter_class_distance=0.22, entanglement=0.07 / 0.22)
    rec = record_from_result(ev, submitter="alice", created="2025-01-02")
    assert (rec.intra_class_distance, rec.inter_class_distance) == (0.07, 0.22)
    assert rec.benign()["inter_class_distance"] == 0.22
    frame = records_to_frame([rec])
    assert frame["inter_class_distance"].tolist() == [0.22] and frame["entanglement"].iloc[0] == pytest.approx(0.318, abs=1e-3)
    # a record written before the diagnostic (schema 2): the same record, the three values not measured
    old = json.loads(rec.to_json())
    for k in ("intra_class_distance", "inter_class_distance", "entanglement"):
        del old[k]
    old["schema_version"] = 2
    back = Record.from_json_dict(old)
    assert back.inter_class_distance is None and back.schema_version == RECORD_SCHEMA_VERSION
    assert back.to_json_dict()["protocols"] == rec.to_json_dict()["protocols"]
    # a version 2 leaderboard file: its rows, NaN in the new columns
    v2 = frame.drop(columns=["intra_class_distance", "inter_class_distance", "entanglement"])
    data = pa.Table.from_pandas(v2, schema=ARROW_SCHEMA_V2, preserve_index=False)
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(data, buf)
    loaded = parquet_bytes_to_frame(buf.getvalue())
    assert list(loaded.columns) == list(COLUMNS) and loaded["inter_class_distance"].isna().all()
    assert loaded["ARS"].tolist() == frame["ARS"].tolist()


def test_records_and_boards_of_schema_3_read_without_budget_or_recipe():
    import pyarrow as pa

    from robustbench_dml.leaderboard.frames import ARROW_SCHEMA_V3, records_to_frame

    rec = record_from_result(make_eval(2), submitter="bob", created="2025-01-02")
    old = json.loads(rec.to_json())
    del old["budget"], old["recipe"], old["evidence_sha256"]
    old["schema_version"] = 3
    back = Record.from_json_dict(old)
    assert back == dataclasses.replace(rec, evidence_sha256=None) and back.budget is None and back.recipe is None
    for bad, match in (({"budget": "gpu"}, "budget"), ({"recipe": "[1]"}, "recipe")):
        with pytest.raises(UserError, match=match):
            Record.from_json_dict({**json.loads(rec.to_json()), **bad})
    frame = records_to_frame([rec])
    buf = io.BytesIO()
    added = ["budget", "recipe", "evidence_sha256"]  # by schemas 4 and 5
    pq.write_table(pa.Table.from_pandas(frame.drop(columns=added), schema=ARROW_SCHEMA_V3, preserve_index=False), buf)
    loaded = parquet_bytes_to_frame(buf.getvalue())
    assert list(loaded.columns) == list(COLUMNS) and loaded["budget"].isna().all()
    assert loaded.drop(columns=added).equals(frame.drop(columns=added))


def test_resistance_plots_come_as_pdf_and_svg_with_intervals_and_readable_labels(tmp_path):
    df, _ = _board(tmp_path, protocols=("corrected",))
    df.loc[0, "GTT"] = 0.0  # a zero term
    svg = plot_resistance(df, tmp_path / "res.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    texts = re.findall(r"<!-- (.*?) -->", svg)  # matplotlib writes each text beside its glyphs
    assert any(t.startswith("CA-TRIDE, 16-step training PGD") for t in texts)  # the paper's name, the steps spelled out
    assert not any("eta" in t for t in texts)
    assert "ARS, 95% interval" in texts and f"{df.loc[0, 'ARS']:.1f}" in texts
    assert plot_resistance(df, tmp_path / "res.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match=r"\.png, \.pdf or \.svg"):
        plot_resistance(df, tmp_path / "res.jpg")
    assert not (tmp_path / "res.jpg").exists()


def test_boards_rank_by_the_strong_suite_where_it_has_rows_with_the_published_ars_beside(tmp_path, capsys):
    """Without --suite a board is the dataset's strong suite (as RobustBench ranks by AutoAttack), each row with the
    same weights' ARS under the published suite beside it; a dataset without strong-suite rows shows the published
    suite and says so after the table."""
    from attacks.suites import get_suite
    from robustbench_dml.cli.main import main

    store = LeaderboardStore(tmp_path / "lb")
    lb = ["--dataset", "digits", "--no-official", "--leaderboard-dir", str(tmp_path / "lb"), "--format", "csv"]
    published = [record_from_result(make_eval(i), submitter="ann", created="2025-01-01") for i in range(3)]
    for rec in published:
        store.add_record(rec)
    out = tmp_path / "one.csv"
    assert main(["leaderboard", "export", *lb, "--output", str(out)]) == 0
    assert "no rankaa28 rows for digits yet" in capsys.readouterr().err
    assert "ARS rob28" not in pd.read_csv(out).columns
    v3 = get_suite("rankaa28")
    strong = {}
    for i in (0, 2):  # two of the three models measured under the strong suite
        ev = make_eval(i + 10)
        ev["checkpoint"] = make_eval(i)["checkpoint"]
        ev["suite"] = {**ev["suite"], "id": v3.id, "version": v3.version, "hash": v3.hash}
        strong[i] = record_from_result(ev, submitter="ann", created="2025-01-01")
        store.add_record(strong[i], allow_ineligible=True)
    out = tmp_path / "two.csv"
    assert main(["leaderboard", "export", *lb, "--output", str(out)]) == 0
    assert "no rankaa28 rows" not in capsys.readouterr().err
    table = pd.read_csv(out).set_index("record_id")
    assert sorted(table.index) == sorted(r.record_id for r in strong.values())
    for i, rec in strong.items():
        assert table.loc[rec.record_id, "ARS"] == pytest.approx(rec.protocols["corrected"].ars, abs=0.05)
        assert table.loc[rec.record_id, "ARS rob28"] == pytest.approx(published[i].protocols["corrected"].ars,
                                                                      abs=0.05)


def test_a_strong_board_missing_a_defense_is_not_the_headline(tmp_path, capsys):
    """A strong board that lacks a defense the published board has would hide that defense's rows: boards rank by
    the published suite until every defense has strong rows, and say which are missing."""
    import copy

    from attacks.suites import get_suite
    from robustbench_dml.cli.main import main

    store = LeaderboardStore(tmp_path / "lb")
    lb = ["--dataset", "digits", "--no-official", "--leaderboard-dir", str(tmp_path / "lb"), "--format", "csv"]
    evals = [make_eval(0), make_eval(1)]
    evals[1]["checkpoint"]["meta"]["defense"] = "hm"
    for ev in evals:
        store.add_record(record_from_result(ev, submitter="ann", created="2025-01-01"))
    v3 = get_suite("rankaa28")

    def add_strong(i: int) -> None:
        ev = copy.deepcopy(evals[i])
        ev["suite"] = {**ev["suite"], "id": v3.id, "version": v3.version, "hash": v3.hash}
        store.add_record(record_from_result(ev, submitter="ann", created="2025-01-01"), allow_ineligible=True)

    add_strong(0)  # CA-TRIDE only: HM's row would vanish from a strong headline
    out = tmp_path / "one.csv"
    assert main(["leaderboard", "export", *lb, "--output", str(out)]) == 0
    assert "rankaa28 has no rows of hm for digits yet" in capsys.readouterr().err
    assert len(pd.read_csv(out)) == 2 and "ARS rob28" not in pd.read_csv(out).columns
    add_strong(1)
    out = tmp_path / "two.csv"
    assert main(["leaderboard", "export", *lb, "--output", str(out)]) == 0
    assert "no rows of" not in capsys.readouterr().err
    assert "ARS rob28" in pd.read_csv(out).columns and len(pd.read_csv(out)) == 2


def test_each_suite_version_has_its_own_board_and_version_1_keeps_its_folder(tmp_path):
    """rankaa28's versions measure different things: records of the same weights under each go to their own
    board (version 1's under the bare id it had before version 2 existed), `--suite` picks a version (a bare id the
    current one), and a store written before there was a version 2 reads on unchanged."""
    from robustbench_dml.cli.main import main

    store = LeaderboardStore(tmp_path / "lb")
    recs = {}
    for version in (1, 2, 3):
        ev = make_eval(3)
        ev["suite"] = {**ev["suite"], "id": "rankaa28", "version": version,
                       "hash": hashlib.sha256(f"rankaa28.v{version}".encode()).hexdigest()}
        recs[version] = record_from_result(ev, submitter="ann", created="2025-01-01")
        assert store.add_record(recs[version]) == (1, True)
    assert (recs[1].board, recs[2].board, recs[3].board) == ("rankaa28", "rankaa28.v2", "rankaa28.v3")
    assert sorted(store.leaderboards()) == [("digits", "rankaa28"), ("digits", "rankaa28.v2"),
                                            ("digits", "rankaa28.v3")]
    assert (tmp_path / "lb" / "records" / "digits" / "rankaa28" / f"{recs[1].record_id}.json").is_file()
    assert [r.suite_version for r in store.records("digits", "rankaa28.v2")] == [2]
    assert list(store.load("digits", "rankaa28")["suite_version"]) == [1]
    for spec, version in (("rankaa28", 3), ("rankaa28.v3", 3), ("rankaa28.v2", 2), ("rankaa28.v1", 1)):
        out = tmp_path / f"{spec}.csv"
        assert main(["leaderboard", "export", "--dataset", "digits", "--suite", spec, "--format", "csv",
                     "--no-official", "--leaderboard-dir", str(tmp_path / "lb"), "--output", str(out)]) == 0
        assert pd.read_csv(out)["record_id"].tolist() == [recs[version].record_id]


def test_a_defense_variant_is_named_in_tables_and_plain_defaults_are_not():
    """Rows of one defense that differ in a categorical option (CA-TRIDE's weighting or mode) must be told apart in
    every table: the title carries each non-default string or boolean option; numbers (budget) and the recorded
    alias of an old name do not; a defense this installation does not know shows its id alone."""
    from defenses.ca_tride import CATRIDEConfig
    from robustbench_dml.columns import defense_title

    default = json.dumps(dataclasses.asdict(CATRIDEConfig()))
    released = json.dumps(dataclasses.asdict(CATRIDEConfig(weighting="released", steps=8, mode="anp")))
    alias = json.dumps({**dataclasses.asdict(CATRIDEConfig()), "weighting_alias": "paper", "step_ramp": False})
    assert defense_title("ca_tride", default) == "CA-TRIDE" == defense_title("ca_tride")
    assert defense_title("ca_tride", released) == "CA-TRIDE (weighting=released, mode=anp)"  # declaration order
    assert defense_title("ca_tride", alias) == "CA-TRIDE (step_ramp=False)"
    assert defense_title("my_plugin", released) == "my_plugin"
    assert defense_title("hm", "{not json") == "HM"
