"""The attack-cost benchmark's scaling part runs end to end at toy sizes, so it cannot rot between the runs whose
output is committed under benchmarks/results/."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attacks.py"


def test_scaling_runs_each_size_in_its_own_process_and_reports_memory():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--skip-overhead", "--sizes", "300,900", "--scaling-steps",
                           "1", "--dim", "8", "--batch", "16", "--threads", "1", "--clock", "cpu"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ")}
    for aid in ("CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"):
        assert len(rows[f"{aid} s"]) == 2 and all(float(v) >= 0 for v in rows[f"{aid} s"])
    assert rows["suite s per item / smallest"][0] == "1.00"
    # a 900 x 8 gallery is 900 * 8 * 4 bytes; peak RSS of a process is never below what it had before the gallery
    assert rows["gallery embeddings MB"] == ["0", "0"]
    base, peak = (list(map(float, rows[k])) for k in ("peak RSS before the gallery MB", "peak RSS MB"))
    assert all(p >= b > 0 for p, b in zip(peak, base))


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_budget_study_derives_a_smaller_engine_with_its_search_from_the_larger_run():
    # the study reads "the search joined to the first gradient runs" off one run at the largest budget. On an attack
    # with alternative targets (GTT: the next neighbours) the targeted runs draw nothing, so an engine with fewer of
    # them makes the same search draws, and the derivation must give its values: exactly where the larger run
    # searched, conservatively (never a stronger attack) where it had reached the floor and left the query
    # unsearched. A small budget and a weak gradient leave queries standing for the search to break
    import torch
    from test_attacks import Toy

    from attacks.engine import Engine, resistance

    toy = Toy(n=1000, seed=11)

    def run(targets):
        engine = Engine(schedule="apgd-paper", steps=2, restarts=1, targets=targets, check_queries=0, search_steps=200)
        return toy.attack("GTT", eps=0.06, alpha=0.004, steps=1, b=32, engine=engine).extra

    small, large = run(1), run(3)
    unit = {"per_query": {"parts": {k: {p: v.tolist() for p, v in d.items()} for k, d in large["parts"].items()},
                          "check": {k: {"search": large["check"][k].tolist(),
                                        "gradient": large["check_gradient"][k].tolist()} for k in large["check"]}}}
    study = _script("rankaa_budget")
    assert study.search_joined({"per_query": None}, "g5") is None
    at_largest, none_left = study.search_joined(unit, "g9")  # all the runs: the run's own last step
    assert torch.equal(at_largest["GTT"], large["parts"]["GTT"]["g9+s200"]) and not none_left["GTT"].any()
    derived, undetermined = study.search_joined(unit, "g5")
    v, known, truth = derived["GTT"], ~undetermined["GTT"], small["parts"]["GTT"]["g5+s200"]
    assert torch.equal(v[known], truth[known])
    assert (resistance("GTT", v) >= resistance("GTT", truth)).all()
    # the search broke queries the first runs left standing, and the derivation saw it
    assert (resistance("GTT", v) < resistance("GTT", small["parts"]["GTT"]["g5"]))[known].any()


def test_the_defense_study_picks_the_default_weighting_by_its_three_tests():
    study = _script("defense_study")

    def row(name, seed, cap, anp, inter, ars):
        return {"name": name, "seed": seed, "adv_gain_cap": cap, "adv_gain_anp": anp, "inter": inter, "ARS": ars}

    by_name = {
        "hm": [row("hm", 0, None, None, 0.70, 48.0), row("hm", 1, None, None, 0.80, 50.0)],  # reference: 0.75
        # attacks in both phases on average (one seed's CAP gain negative) and shrinks less than HM: passes
        "ca_tride": [row("ca_tride", 0, -0.01, 0.05, 0.74, 40.0), row("ca_tride", 1, 0.03, 0.05, 0.78, 42.0)],
        # passes too, with the better ARS: the verdict
        "ca_tride[slides]": [row("ca_tride[slides]", 0, 0.02, 0.01, 0.90, 45.0),
                             row("ca_tride[slides]", 1, 0.02, 0.01, 0.90, 47.0)],
        "ca_tride[released]": [row("ca_tride[released]", 0, -0.05, 0.09, 0.80, 60.0)],  # (a) fails: CAP eases
        "ca_tride[research_build]": [row("ca_tride[research_build]", 0, 0.07, 0.07, 0.10, 70.0)],  # (b) fails
        "ca_anp": [row("ca_anp", 0, None, 0.06, 0.90, 80.0)],  # a single-phase ablation is no candidate
    }
    lines = study.weighting_verdict(by_name)
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in lines if line.startswith("| `")}
    assert list(table) == ["`slides_detached`", "`slides`", "`released`", "`research_build`"]
    assert table["`slides_detached`"] == ["0,1", "0.010 / 0.050", "yes", "0.760 (0.750)", "yes", "41.0"]
    assert table["`released`"][2:5] == ["no", "0.800 (0.700)", "yes"]  # HM on its seed only
    assert table["`research_build`"][2:5] == ["yes", "0.100 (0.700)", "no"]
    assert lines[-1] == "Verdict: `slides` passes (a) and (b) with the best ARS (46.0) of those that do."
    # a seed HM lacks leaves (b) unknown: the verdict waits, naming what passes so far
    # (released fails (a), known, so it is no longer waited for)
    by_name["ca_tride[research_build]"][0]["seed"] = 5
    assert study.weighting_verdict(by_name)[-1] == ("Verdict pending: `research_build` lacks a measurement (-); of "
                                                    "the rest `slides` passes (a) and (b) with the best ARS (46.0).")
    by_name["ca_tride[research_build]"][0]["seed"] = 0
    # every test known and none passing both: said plainly
    for r in by_name["ca_tride"] + by_name["ca_tride[slides]"]:
        r["inter"] = 0.5
    none = study.weighting_verdict(by_name)[-1]
    assert none.startswith("Verdict: no weighting passes (a) and (b) together")
    assert "the default stays the package's, `slides_detached`" in none  # what a CA-TRIDE run without --set gets
    # without the adversary's gains (an entry built without its training log) (a) is unknown, not failed: the
    # verdict waits for every weighting that has not failed a known test (the others fail (b) whatever (a) is)
    for rs in by_name.values():
        for r in rs:
            r["adv_gain_cap"] = r["adv_gain_anp"] = None
    lines = study.weighting_verdict(by_name)
    assert [line.split("|")[4].strip() for line in lines if line.startswith("| `")] == ["-"] * 4
    assert lines[-1] == "Verdict pending: `released` lacks a measurement (-)."
    assert study.weighting_verdict({k: v for k, v in by_name.items() if k != "hm"}) == []


def test_the_defense_study_reads_a_run_folders_log_only_for_the_weights_it_trained(tmp_path):
    # an entry without a training log falls back to its run folder, but not to a retraining under way there (no
    # checkpoint yet: its partial log would give partial means) nor to a folder holding other weights
    study = _script("defense_study")
    (tmp_path / "history.jsonl").write_text('{"epoch": 0, "adv_gain": 0.1}\n')
    assert study._run_history(tmp_path, "ab" * 32) == []
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "meta.json").write_text('{"weights_sha256": "' + "cd" * 32 + '"}')
    assert study._run_history(tmp_path, "ab" * 32) == []
    assert study._run_history(tmp_path, "cd" * 32) == [{"epoch": 0, "adv_gain": 0.1}]
