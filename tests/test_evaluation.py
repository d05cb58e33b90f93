"""The evaluation runner on the embedded digits test split with a tiny linear embedding model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import attacks
from attacks.suites import ROB28, Suite
from robustbench_dml import datasets, evaluation
from robustbench_dml.evaluation import EvalConfig, EvaluationResult, aggregate, batch_ranges, evaluate, model_target
from robustbench_dml.errors import UserError
from robustbench_dml.gallery import embed
from robustbench_dml.runtime import generator

SMALL = Suite(id="small", version=1, eps=0.1, alpha=0.02, steps=2, batch_size=16, attacks=ROB28.attacks)
NQ = 40  # batches of 16, 16, 8


@pytest.fixture(scope="module")
def digits():
    """The first 300 items of the digits test split (a gallery of 300 keeps the file fast)."""
    full = datasets.create("digits", split="test")
    return datasets.TensorDataset(full.images[:300], full.labels[:300], full.info)


def run(target, **kw):
    """evaluate() under SMALL with the measurement options of ``kw`` in the EvalConfig, the rest as run options."""
    cfg = {k: kw.pop(k) for k in ("attacks", "max_queries", "eps", "seed", "robrank_compat", "numerics") if k in kw}
    return evaluate(target, EvalConfig(SMALL, **cfg), **kw)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16))


@pytest.fixture(scope="module")
def base(model, digits):
    return run(model_target(model, {"dataset": "digits"}, digits), max_queries=NQ, device="cpu", benign_nmi=False)


def test_result_layout_and_json_round_trip(base, model, tmp_path):
    d = json.loads(base.to_json())
    for k in ("schema_version", "checkpoint", "suite", "seed", "device", "versions", "robrank_compat", "num_queries",
              "benign", "protocols"):
        assert k in d
    assert d["schema_version"] == 2 and d["num_queries"] == NQ and d["robrank_compat"] is False
    assert list(d["protocols"]) == ["corrected", "robrank"]  # every evaluation measures both
    sizes = [16, 16, 8]
    for name, block in d["protocols"].items():
        assert set(block) == {"raw", "per_query", "success", "scores", "clean"}
        assert set(block["raw"]) == {"CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT", "R@1"}
        assert set(block["per_query"]) == set(block["raw"])
        assert set(block["success"]) == set(ROB28.attack_ids)
        assert all(len(v) == NQ for v in block["per_query"].values())
        assert all(len(v) == NQ for v in block["success"].values())
        for k, v in block["per_query"].items():
            if name == "corrected":
                assert block["raw"][k] == pytest.approx(sum(v) / NQ)
            else:  # Q4: the mean of the per-batch means
                parts = [v[:16], v[16:32], v[32:]]
                assert block["raw"][k] == pytest.approx(sum(sum(p) / n for p, n in zip(parts, sizes)) / 3)
        s = block["scores"]
        assert s["ERS"] is not None and s["ERS_ci"][0] <= s["ERS"] <= s["ERS_ci"][1]
        assert s["ARS"] is not None and 0 <= s["worst_case"] <= 100
    # the plain attributes show the default protocol
    assert base.raw == d["protocols"]["corrected"]["raw"] and base.protocol == "corrected"
    assert d["suite"]["hash"] == SMALL.hash and d["suite"]["overrides"] == {"eps": None, "attacks": None,
                                                                          "max_queries": NQ}
    assert d["suite"]["eligible"] is False  # max_queries is an override
    assert d["checkpoint"]["sha256"] == evaluation.model_sha256(model) and d["checkpoint"]["path"] is None
    again = EvaluationResult.from_json(base.to_json(tmp_path / "r.json"))
    assert again.to_json() == base.to_json()
    assert again.raw == base.raw and again.per_query == base.per_query
    assert EvaluationResult.from_json(tmp_path / "r.json").block("robrank") == base.block("robrank")


def test_protocols_differ_only_where_the_quirks_act(base):
    c, r = base.block("corrected"), base.block("robrank")
    for k in ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:R", "GTT", "R@1"):  # no quirk: the same run, the same values
        assert c["per_query"][k] == r["per_query"][k]
    # Q1: one ES run, ES:D measured after the last step vs one step early (2 steps: after the first), so smaller
    assert all(a > b for a, b in zip(c["per_query"]["ES:D"], r["per_query"]["ES:D"]))
    # Q2/Q3 change the targets of GTM and LTM (each ran twice): some queries end differently
    for k in ("GTM", "LTM"):
        assert c["per_query"][k] != r["per_query"][k]


def test_both_protocols_run_equals_the_reference_call_pattern_alone(model, digits, base):
    alone = run(model_target(model, {"dataset": "digits"}, digits), max_queries=NQ, device="cpu", benign_nmi=False,
                     robrank_compat=True)
    assert alone.robrank_compat and list(alone.protocols) == ["robrank"] and alone.protocol == "robrank"
    assert alone.block("robrank") == base.block("robrank")
    with pytest.raises(UserError, match="without --robrank-compat"):
        alone.block("corrected")


def test_version_1_results_load_as_their_one_protocol(base):
    d = json.loads(base.to_json())
    d.pop("sha256")  # version 1 files carry no digest
    block = d.pop("protocols")["robrank"]
    v1 = {**d, "schema_version": 1, "robrank_compat": True, **{k: block[k] for k in ("raw", "per_query", "success",
                                                                                    "scores")},
          "extra": {"clean": block["clean"]}}
    old = EvaluationResult.from_dict(v1)
    assert list(old.protocols) == ["robrank"] and old.block("robrank") == base.block("robrank")
    assert list(EvaluationResult.from_dict({**v1, "robrank_compat": False}).protocols) == ["corrected"]
    with pytest.raises(UserError, match="schema_version 7"):
        EvaluationResult.from_dict({**v1, "schema_version": 7})


def test_benign_r1_matches_metrics(model, digits):
    r = run(model_target(model, {"dataset": "digits"}, digits), attacks=["TMA"], device="cpu", benign_nmi=False)
    assert r.num_queries == len(digits)
    assert r.raw["R@1"] == pytest.approx(r.benign["R@1"])
    assert r.scores["ERS"] is None and r.scores["worst_case"] is not None


def test_eps_zero_leaves_every_result_clean(model, digits, base):
    r = run(model_target(model, {"dataset": "digits"}, digits), max_queries=NQ, eps=0.0, device="cpu",
                 benign_nmi=False)
    assert r.suite["overrides"]["eps"] == 0.0 and not r.eligible
    raw = r.raw
    assert raw["ES:D"] == 0.0 and raw["GTT"] == 100.0
    assert raw["ES:R"] == raw["LTM"] == raw["GTM"] == raw["R@1"]
    assert r.scores["worst_case"] == 0.0
    # every result equals the same measurement on the clean queries (kept in each protocol's "clean")
    assert set(r.clean) == set(raw) - {"R@1"}
    assert all(raw[k] == pytest.approx(v, abs=1e-9) for k, v in r.clean.items())
    assert base.clean == pytest.approx(r.clean)  # clean values do not depend on eps
    # the attacks at eps 0.1 move every result in the attacker's direction
    b = base.raw
    assert b["CA+"] < raw["CA+"] and b["QA+"] < raw["QA+"] and b["CA-"] > raw["CA-"] and b["QA-"] > raw["QA-"]
    assert b["TMA"] > raw["TMA"] and b["ES:D"] > 0 and b["GTT"] < 100


def test_same_seed_same_numbers_other_seed_other_selection(model, digits, base):
    again = run(model_target(model, {"dataset": "digits"}, digits), max_queries=NQ, device="cpu", benign_nmi=False,
                     attacks=["CA+", "TMA"])
    assert again.per_query["CA+"] == base.per_query["CA+"] and again.per_query["TMA"] == base.per_query["TMA"]
    other = run(model_target(model, {"dataset": "digits"}, digits), max_queries=NQ, device="cpu", benign_nmi=False,
                     attacks=["TMA"], seed=1)
    assert other.per_query["TMA"] != base.per_query["TMA"]


def test_batch_results_depend_only_on_seed_attack_and_batch_index(model, digits, base):
    gallery = embed(model, digits, device="cpu")
    for b in reversed(range(3)):  # any order
        start, stop = batch_ranges(NQ, SMALL.batch_size)[b]
        images = torch.stack([digits[i][0] for i in range(start, stop)])
        labels = torch.tensor([digits[i][1] for i in range(start, stop)])
        atk = attacks.create("QA-", model=model, eps=SMALL.eps, alpha=SMALL.alpha, steps=SMALL.steps, M=1)
        out = atk(images, labels, gallery, generator=generator(0, "QA-", b), query_index=torch.arange(start, stop))
        assert out.per_query["QA-"].tolist() == base.per_query["QA-"][start:stop]


def test_resume_skips_finished_attacks_and_gives_the_same_numbers(model, digits, tmp_path, monkeypatch):
    kw = dict(max_queries=NQ, device="cpu", benign_nmi=False, state_dir=tmp_path, attacks=["CA-", "QA+", "GTT"])
    first = run(model_target(model, {"dataset": "digits"}, digits), **kw)
    (state,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in state.iterdir()) == ["CAminus.json", "GTT.json", "QAplus.json"]
    assert set(json.loads((state / "GTT.json").read_text())["protocols"]) == {"corrected", "robrank"}
    (state / "GTT.json").unlink()  # "interrupted" before GTT finished

    def boom(*a, **k):
        raise AssertionError("a finished attack ran again")

    monkeypatch.setattr(attacks.query.QueryAttack, "__call__", boom)
    monkeypatch.setattr(attacks.candidate.CandidateAttack, "__call__", boom)
    second = run(model_target(model, {"dataset": "digits"}, digits), **kw)
    assert second.raw == first.raw and second.per_query == first.per_query and second.success == first.success
    assert (state / "GTT.json").is_file()
    # a state file written by another revision of its attack (say, before a success rule changed) is recomputed
    stale = json.loads((state / "QAplus.json").read_text())
    assert stale["revision"] == attacks.ATTACKS.get("QA+").revision
    stale["revision"] -= 1
    stale["protocols"]["corrected"]["per_query"]["QA+"] = [-1.0] * NQ
    (state / "QAplus.json").write_text(json.dumps(stale))
    monkeypatch.undo()
    monkeypatch.setattr(attacks.candidate.CandidateAttack, "__call__", boom)
    monkeypatch.setattr(attacks.gtt.GreedyTop1Translocation, "__call__", boom)
    third = run(model_target(model, {"dataset": "digits"}, digits), **kw)
    assert third.per_query == first.per_query
    assert json.loads((state / "QAplus.json").read_text())["revision"] == stale["revision"] + 1
    # another seed is another state key
    monkeypatch.undo()
    run(model_target(model, {"dataset": "digits"}, digits), **{**kw, "attacks": ["TMA"]}, seed=3)
    assert len(list(tmp_path.iterdir())) == 2


def test_each_attack_records_its_time_and_its_lower_bound(base):
    timing = base.extra["timing"]
    fb = timing["forward_backward_s"]
    assert fb > 0 and timing["batch_size"] == SMALL.batch_size and list(timing["attacks"]) == SMALL.attack_ids
    for attack_id, t in timing["attacks"].items():
        runs = 2 if attack_id in ("GTM", "LTM") else 1  # their targets differ between the protocols: run twice
        # the bound: PGD iterations (2 per image) x one forward+backward per full batch, batches of 16, 16 and 8
        assert t["bound_s"] == pytest.approx(runs * SMALL.steps * fb * NQ / SMALL.batch_size)
        assert t["wall_s"] > 0 and t["ratio"] == pytest.approx(t["wall_s"] / t["bound_s"])
    # the unit is the smaller of two measurements, before the first attack and after the last
    assert fb == min(timing["forward_backward_before_s"], timing["forward_backward_after_s"]) and timing["repeats"] >= 5
    assert timing["probe"] == "evaluation"
    assert timing["suspect"] == [a for a, t in timing["attacks"].items() if t["ratio"] < 0.95]


def test_the_plans_probe_is_the_bounds_first_measurement_and_a_suspect_bound_is_said(model, digits):
    from robustbench_dml.cli.report import protocol_lines

    r = run(model_target(model, {"dataset": "digits"}, digits), attacks=["TMA"], max_queries=8, device="cpu",
            benign_nmi=False, probe=[1e-9, 2e-9])
    timing = r.extra["timing"]
    assert timing["probe"] == "plan" and timing["forward_backward_before_s"] == 1e-9   # not timed again
    assert timing["forward_backward_s"] == 1e-9                                          # the smaller one
    # a bound of a nanosecond per batch: the attack's time is far above it, nothing suspect
    assert timing["suspect"] == [] and timing["attacks"]["TMA"]["ratio"] > 1
    # a time below its own bound (a measurement under changing load) is reported, in the result and by evaluate
    r.extra["timing"] = {**timing, "suspect": ["TMA"]}
    assert any("the time of TMA is below its lower bound" in line for line in protocol_lines(r))


def test_q4_aggregation_mean_of_batch_means():
    sizes = [e - s for s, e in batch_ranges(1000, 128)]
    assert sizes == [128] * 7 + [104]
    values = [float(b) for b, n in enumerate(sizes) for _ in range(n)]
    assert aggregate(values, sizes, robrank_compat=True) == pytest.approx(3.5)  # mean of 0..7
    assert aggregate(values, sizes) == pytest.approx((128 * 21 + 104 * 7) / 1000)


def test_sharded_ranks_gather_to_the_single_process_result(model, digits, base, monkeypatch):
    kw = dict(max_queries=NQ, device="cpu", benign_nmi=False, attacks=["QA+"])
    captured = {}

    class Stop(Exception):
        pass

    def gather_rank1(local, world):
        captured.update(local)
        raise Stop

    monkeypatch.setattr(evaluation, "_dist_info", lambda: (1, 2))
    monkeypatch.setattr(evaluation, "_gather", gather_rank1)
    with pytest.raises(Stop):
        run(model_target(model, {"dataset": "digits"}, digits), **kw)
    assert sorted(captured) == [1]  # rank 1 of 2 ran batch 1 only
    monkeypatch.setattr(evaluation, "_dist_info", lambda: (0, 2))
    monkeypatch.setattr(evaluation, "_gather", lambda local, world: {**local, **captured, **local})
    r = run(model_target(model, {"dataset": "digits"}, digits), **kw)
    assert r.per_query["QA+"] == base.per_query["QA+"] and r.success["QA+"] == base.success["QA+"]


def test_checkpoint_directory_input(tmp_path):
    from robustbench_dml import backbones
    from robustbench_dml.checkpoint import checkpoint_sha256, save_checkpoint

    torch.manual_seed(0)
    net = backbones.create("c2f2", embedding_dim=8)
    meta = {"dataset": "digits", "defense": "vanilla"}
    path = save_checkpoint(tmp_path / "ckpt", net, meta)
    r = run(path, attacks=["TMA"], max_queries=8, device="cpu", benign_nmi=False)
    assert r.checkpoint["sha256"] == checkpoint_sha256(path) and r.checkpoint["path"] == str(path)
    assert r.checkpoint["meta"]["dataset"] == "digits"


def test_checkpoint_evaluates_on_its_training_data_root_by_default(tmp_path):
    from robustbench_dml import backbones
    from robustbench_dml.checkpoint import save_checkpoint
    from fixtures_datasets import make_idx

    make_idx(tmp_path / "data", n_test=6)     # mnist has no embedded copy: only the recorded folder can serve
    torch.manual_seed(0)
    meta = {"dataset": "mnist", "defense": "vanilla", "train_config": {"data_root": str(tmp_path / "data")}}
    path = save_checkpoint(tmp_path / "ckpt", backbones.create("c2f2", embedding_dim=8), meta)
    r = run(path, attacks=["TMA"], max_queries=4, device="cpu", benign_nmi=False)
    assert r.num_queries == 4 and len(r.per_query["TMA"]) == 4
    with pytest.raises(UserError, match="--data-root"):       # an explicit folder wins over the recorded one
        run(path, attacks=["TMA"], max_queries=4, device="cpu", data_root=str(tmp_path / "empty"))


def test_user_errors(model, digits):
    with pytest.raises(UserError, match="not in suite"):
        run(model_target(model, {}, digits), attacks=["XX"], device="cpu")
    with pytest.raises(UserError, match="max-queries"):
        run(model_target(model, {}, digits), max_queries=0, device="cpu")
    with pytest.raises(UserError, match="does not exist"):
        run("/nonexistent/ckpt", device="cpu")


@pytest.mark.parametrize("setting", ["matmul_tf32", "cudnn_tf32", "cudnn_benchmark", "deterministic", "channels_last"])
def test_each_numeric_setting_is_applied_recorded_and_restored(setting, model, digits):
    import dataclasses

    import torch

    from robustbench_dml.numerics import EXACT

    flipped = dataclasses.replace(EXACT, name=f"flip-{setting}", **{setting: not getattr(EXACT, setting)})
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled())
    r = run(model_target(model, {"dataset": "digits"}, digits), attacks=["TMA"], max_queries=4, numerics=flipped,
            device="cpu", benign_nmi=False)
    assert r.numerics[setting] is (not getattr(EXACT, setting))   # what torch reported while it ran
    assert all(r.numerics[k] is getattr(EXACT, k) for k in ("matmul_tf32", "cudnn_tf32", "cudnn_benchmark",
                                                             "deterministic", "channels_last") if k != setting)
    assert r.numerics["policy"] == f"flip-{setting}" and r.suite["overrides"]["numerics"] == f"flip-{setting}"
    assert not r.eligible
    after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled())
    assert after == before
    assert json.loads(r.to_json())["numerics"] == r.numerics


def test_the_channels_last_layout_runs_the_convolutions_in_nhwc_and_leaves_the_callers_model_as_it_was(digits):
    # the fast policy's CPU speed-up: the same model in another memory layout, so the same numbers up to the last
    # bits of the convolutions' sums; the caller's weights come back in their own layout
    import dataclasses

    from robustbench_dml import backbones
    from robustbench_dml.numerics import EXACT

    torch.manual_seed(0)
    net = backbones.create("c2f2", embedding_dim=32, in_channels=1).eval()
    seen = []
    net.trunk[0].register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    target = model_target(net, {"dataset": "digits"}, digits)
    nhwc = dataclasses.replace(EXACT, name="nhwc", channels_last=True)
    fast = run(target, attacks=["TMA", "ES"], max_queries=16, numerics=nhwc, device="cpu", benign_nmi=False)
    assert seen and all(seen) and fast.numerics["channels_last"] is True and not fast.eligible
    assert all(p.is_contiguous() for p in net.parameters())  # back in the layout it came in
    seen.clear()
    exact = run(target, attacks=["TMA", "ES"], max_queries=16, device="cpu", benign_nmi=False)
    assert seen and not any(seen) and exact.numerics["channels_last"] is False
    assert fast.benign["R@1"] == exact.benign["R@1"]  # a 300-item gallery: no neighbour moves at 1e-7
    for key in ("TMA", "ES:D"):
        assert max(abs(a - b) for a, b in zip(fast.per_query[key], exact.per_query[key])) < 1e-3


def test_the_default_numeric_policy_is_recorded_and_eligible(base):
    assert base.numerics["policy"] == "exact" and base.numerics["deterministic"] is True
    assert base.numerics["matmul_tf32"] is False and base.numerics["tie_order"].startswith("(distance, gallery index)")
    assert "numerics" not in base.suite["overrides"]
