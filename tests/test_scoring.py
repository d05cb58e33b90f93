"""ERS / ARS against the published numbers of the RobRank, HM and CA-TRIDE papers; errors; bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robustbench_dml import scoring
from robustbench_dml.scoring import ars, bootstrap_ci, ers, resistance_terms, worst_case

KEYS10 = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")


def raw10(*values: float, **extra: float) -> dict[str, float]:
    return {**dict(zip(KEYS10, values, strict=True)), **extra}


def from_terms(r1: float, t: tuple[float, ...]) -> dict[str, float]:
    """Invert the 8 ARS resistance terms (CA+ CA- QA+ QA- ES:R LTM GTM GTT) by hand."""
    ca_p, ca_m, qa_p, qa_m, esr, ltm, gtm, gtt = t
    return {"CA+": ca_p / 2, "CA-": 100 - ca_m, "QA+": qa_p / 2, "QA-": 100 - qa_m, "ES:R": esr * r1 / 100,
            "LTM": ltm * r1 / 100, "GTM": gtm * r1 / 100, "GTT": gtt, "R@1": r1}


ACT_CUB = raw10(15.5, 37.7, 15.1, 32.2, 0.472, 0.821, 11.1, 9.4, 14.9, 1.0)


def test_ers_worked_example_act_cub():
    terms = resistance_terms(ACT_CUB, "ERS")
    expected = [31.0, 62.3, 30.2, 67.8, 52.8, 58.95, 11.1, 9.4, 14.9, 1.0]
    assert list(terms) == list(KEYS10)
    assert list(terms.values()) == pytest.approx(expected, abs=1e-9)
    assert ers(ACT_CUB) == pytest.approx(33.945, abs=1e-9)
    assert round(ers(ACT_CUB), 1) == 33.9


def test_perfect_and_broken_tuples():
    assert ers(raw10(50, 0, 50, 0, 0, 0, 100, 100, 100, 100)) == pytest.approx(100.0)
    assert ers(raw10(0, 100, 0, 100, 1, 2, 0, 0, 0, 0)) == pytest.approx(0.0)
    assert ars(raw10(50, 0, 50, 0, 0.9, 1.9, 80, 80, 80, 100, **{"R@1": 80})) == pytest.approx(100.0)
    assert ars(raw10(0, 100, 0, 100, 1, 2, 0, 0, 0, 0, **{"R@1": 50})) == pytest.approx(0.0)


@pytest.mark.parametrize("r1, terms, published", [
    (27.5, (31.0, 62.9, 30.2, 68.5, 40.3, 34.2, 54.2, 1.0), 40.3),   # ACT
    (34.9, (31.0, 62.9, 33.2, 69.8, 51.3, 47.9, 78.2, 2.9), 47.2),   # HM
    (34.9, (32.6, 68.5, 41.8, 79.2, 61.9, 59.0, 64.8, 5.3), 51.6),   # CA-TRIDE
    (34.2, (27.4, 56.7, 35.6, 73.3, 57.3, 61.1, 65.8, 5.1), 47.8),   # CA-ANP (CA-TRIDE ablation)
    (33.8, (34.2, 68.0, 52.2, 70.8, 51.2, 47.6, 60.7, 3.1), 48.5),   # CA-CAP
])
def test_ars_catride_table(r1, terms, published):
    raw = from_terms(r1, terms)
    assert list(resistance_terms(raw, "ARS").values()) == pytest.approx(list(terms), abs=1e-9)
    assert abs(ars(raw) - published) <= 0.05 + 1e-9   # published to one decimal (HM: 47.15 -> 47.2)


def test_ars_hm_uses_r1_relative_recall():
    # the CA-TRIDE paper: HM's ES:R term is 100 * 17.9 / 34.9 = 51.3 from the HM paper's raw ES:R of 17.9
    raw = {**from_terms(34.9, (31.0, 62.9, 33.2, 69.8, 51.3, 47.9, 78.2, 2.9)), "ES:R": 17.9}
    assert resistance_terms(raw, "ARS")["ES:R"] == pytest.approx(51.289, abs=1e-3)
    assert ars(from_terms(34.9, (31.0, 62.9, 33.2, 69.8, 51.3, 47.9, 78.2, 2.9))) == pytest.approx(47.15)
    assert sum(resistance_terms(raw, "ARS").values()) / 8 == pytest.approx(ars(raw))


@pytest.mark.parametrize("values, published", [
    ((19.9, 35.1, 20.0, 25.9, 0.485, 0.779, 15.4, 13.7, 20.7, 1.4), 38.3),
    ((22.7, 36.3, 22.3, 26.0, 0.541, 0.818, 11.4, 9.2, 24.1, 2.0), 37.9),
    ((20.8, 25.0, 21.1, 22.4, 0.410, 0.709, 24.4, 19.8, 26.8, 1.6), 43.3),
    ((23.1, 46.0, 23.0, 42.4, 0.753, 0.676, 5.0, 4.4, 19.3, 0.6), 32.4),
    ((33.6, 14.6, 38.5, 12.1, 0.259, 0.541, 48.5, 59.5, 60.2, 0.1), 63.3),    # Fashion rc2f2p:ptripletN
    ((0.7, 96.8, 0.3, 93.3, 0.987, 10.91, 24.0, 0.3, 7.0, 0.0), -40.1),      # Fashion rc2f2:ptripletE, no clipping
])
def test_ers_attacks_md_rows(values, published):
    assert round(ers(raw10(*values)), 1) == published


def test_hm_headline_cub_rows_defenses_md():
    hm = raw10(15.5, 37.7, 16.6, 30.9, 0.753, 0.506, 17.9, 16.7, 27.3, 2.9)
    assert ers(hm) == pytest.approx(35.98, abs=1e-9)
    assert round(ers(hm), 1) == 36.0
    none = raw10(0.0, 100.0, 0.0, 99.9, 0.883, 1.762, 0.0, 0.0, 14.1, 0.0)
    assert round(ers(none), 1) == 3.8


def test_no_clipping_and_unrounded():
    raw = raw10(60, 0, 50, 0, 0, 0, 100, 100, 100, 100)   # 2*CA+ = 120 stays 120
    assert resistance_terms(raw)["CA+"] == 120.0
    assert ers(raw) == pytest.approx(102.0)
    assert isinstance(ers(ACT_CUB), float)
    assert ers(ACT_CUB) != round(ers(ACT_CUB), 1)


def test_collapsed_model_scores_well_on_ers_but_not_ars():
    # A collapsed model (everything maps to one point): ES:D = 0 and TMA = 1 reward nothing on ARS
    raw = raw10(50, 50, 50, 50, 1.0, 0.0, 0.8, 0.8, 0.8, 100, **{"R@1": 0.8})
    assert ers(raw) > ars(raw) - 100  # sanity: both computed
    assert resistance_terms(raw, "ARS")["ES:R"] == pytest.approx(100.0)
    assert "TMA" not in resistance_terms(raw, "ARS") and "ES:D" not in resistance_terms(raw, "ARS")


def test_missing_keys_are_named():
    raw = dict(ACT_CUB)
    del raw["LTM"], raw["GTT"]
    with pytest.raises(ValueError, match="LTM, GTT"):
        ers(raw)
    with pytest.raises(ValueError, match="R@1"):
        ars(ACT_CUB)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_raises(bad):
    with pytest.raises(ValueError, match="TMA"):
        ers({**ACT_CUB, "TMA": bad})
    with pytest.raises(ValueError, match="R@1"):
        ars({**ACT_CUB, "R@1": bad})


def test_ars_zero_r1_raises_and_bad_types():
    with pytest.raises(ValueError, match="R@1"):
        ars({**ACT_CUB, "R@1": 0.0})
    with pytest.raises(ValueError, match="CA\\+"):
        ers({**ACT_CUB, "CA+": "abc"})
    with pytest.raises(ValueError, match="unknown score"):
        resistance_terms(ACT_CUB, "XRS")
    # numpy scalars are accepted
    assert ers({k: np.float32(v) for k, v in ACT_CUB.items()}) == pytest.approx(33.945, abs=1e-4)


# ---- bootstrap ---------------------------------------------------------------------------------------------------
def _per_query(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    r1 = (rng.random(n) < 0.6) * 100.0
    return {
        "CA+": rng.uniform(0, 60, n), "CA-": rng.uniform(0, 80, n), "QA+": rng.uniform(0, 60, n),
        "QA-": rng.uniform(0, 80, n), "TMA": rng.uniform(-0.2, 1, n), "ES:D": rng.uniform(0, 1.5, n),
        "ES:R": r1 * (rng.random(n) < 0.5), "LTM": r1 * (rng.random(n) < 0.4), "GTM": r1 * (rng.random(n) < 0.6),
        "GTT": (rng.random(n) < 0.1) * 100.0, "R@1": r1,
    }


@pytest.mark.parametrize("name", ["ERS", "ARS"])
def test_bootstrap_contains_point_and_is_seeded(name):
    pq = _per_query(400)
    point = scoring.score({k: float(v.mean()) for k, v in pq.items()}, name)
    lo, hi = bootstrap_ci(pq, score=name, n_boot=500, seed=3)
    assert lo < point < hi
    assert bootstrap_ci(pq, score=name, n_boot=500, seed=3) == (lo, hi)
    assert bootstrap_ci(pq, score=name, n_boot=500, seed=4) != (lo, hi)
    lo90, hi90 = bootstrap_ci(pq, score=name, n_boot=500, seed=3, level=0.5)
    assert lo <= lo90 < hi90 <= hi


def test_bootstrap_narrows_with_more_queries():
    small = bootstrap_ci(_per_query(100), n_boot=400)
    big = bootstrap_ci(_per_query(1600), n_boot=400)
    assert (big[1] - big[0]) < 0.5 * (small[1] - small[0])


def test_bootstrap_resamples_jointly_and_r1_too():
    # ES:R == R@1 per query: jointly resampled, the ARS ES:R term is exactly 100 in every replicate; resampling
    # R@1 independently would spread it. All other terms constant -> a zero-width interval.
    n = 200
    r1 = np.r_[np.full(n // 2, 100.0), np.zeros(n // 2)]
    pq = {"CA+": np.full(n, 25.0), "CA-": np.full(n, 10.0), "QA+": np.full(n, 25.0), "QA-": np.full(n, 10.0),
          "ES:R": r1, "LTM": r1, "GTM": r1, "GTT": np.full(n, 50.0), "R@1": r1}
    lo, hi = bootstrap_ci(pq, score="ARS", n_boot=300, seed=0)
    expected = (50 + 90 + 50 + 90 + 100 + 100 + 100 + 50) / 8
    assert lo == pytest.approx(expected) and hi == pytest.approx(expected)
    # but for ERS the recall columns are absolute, so the interval has width
    pq_ers = {**pq, "TMA": np.zeros(n), "ES:D": np.zeros(n)}
    lo, hi = bootstrap_ci(pq_ers, score="ERS", n_boot=300, seed=0)
    assert hi - lo > 1.0


def test_bootstrap_errors():
    pq = _per_query(50)
    with pytest.raises(ValueError, match="GTT"):
        bootstrap_ci({k: v for k, v in pq.items() if k != "GTT"})
    with pytest.raises(ValueError, match="length"):
        bootstrap_ci({**pq, "CA+": pq["CA+"][:-1]})
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci({**pq, "TMA": np.r_[pq["TMA"][:-1], np.nan]})
    with pytest.raises(ValueError, match="R@1"):
        bootstrap_ci({**pq, "R@1": np.zeros(50)}, score="ARS")
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(pq, level=1.5)


# ---- worst case --------------------------------------------------------------------------------------------------
def test_worst_case():
    success = {"CA+": [True, False, False, False], "QA-": [False, False, True, False],
               "GTM": [True, False, False, False]}
    assert worst_case(success) == pytest.approx(50.0)
    assert worst_case({"CA+": [False] * 3}) == 0.0
    assert worst_case({"CA+": np.array([1, 1, 0])}) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="length"):
        worst_case({"CA+": [True], "QA+": [True, False]})
    with pytest.raises(ValueError):
        worst_case({})


def test_worst_case_by_threat_counts_each_threat_s_attacks_only():
    s = {"CA+": [True, False, False, False], "CA-": [False, False, True, False],
         "QA+": [False, False, False, False], "QA-": [False, True, False, False],
         "ES": [False, False, False, False], "LTM": [True, True, False, False], "GTM": [False, False, False, True],
         "GTT": [True, True, True, True]}
    assert scoring.worst_case_by_threat(s) == {"candidate": 50.0, "query": 25.0, "recall": 75.0}
    assert scoring.worst_case(s) == 100.0  # GTT alone breaks every query: the overall worst case ranks nothing
    # relative to the queries whose clean top-1 is right (3 of 4): 3 broken of 3 breakable
    assert scoring.worst_case_by_threat(s, [True, True, False, True])["recall"] == pytest.approx(100.0)
    del s["LTM"]
    assert "recall" not in scoring.worst_case_by_threat(s)


def test_single_terms_and_their_inverses_agree_with_the_scores():
    raw = {"CA+": 12.5, "CA-": 40.0, "QA+": 7.0, "QA-": 55.5, "TMA": 0.61, "ES:D": 0.8, "ES:R": 30.0, "LTM": 22.0,
           "GTM": 41.0, "GTT": 3.0, "R@1": 80.0}
    for name, keys in (("ERS", scoring.ERS_TERMS), ("ARS", scoring.ARS_TERMS)):
        full = scoring.resistance_terms(raw, name)
        assert tuple(full) == keys
        for k in keys:
            assert scoring.term(raw, k, name) == full[k]
            assert set(scoring.term_inputs(k, name)) <= set(raw)
    for k in scoring.ARS_TERMS:  # published rows give ARS terms: the inverse recovers the raw result
        assert scoring.raw_from_term(k, scoring.term(raw, k, "ARS"), raw["R@1"]) == pytest.approx(raw[k])
    assert scoring.term(raw, "TMA") == pytest.approx(39.0) and scoring.term(raw, "GTM") == pytest.approx(51.25)


def test_partial_terms_are_those_the_inputs_allow():
    raw = {"CA+": 12.5, "QA-": 55.5, "LTM": 22.0, "GTM": float("nan"), "R@1": 80.0}
    # by hand: CA+ 2 * 12.5; QA- 100 - 55.5; LTM 100 * 22 / 80; GTM not finite: left out
    assert scoring.resistance_terms(raw, "ARS", partial=True) == {"CA+": 25.0, "QA-": 44.5, "LTM": 27.5}
    assert scoring.resistance_terms(raw, "ERS", partial=True) == {"CA+": 25.0, "QA-": 44.5, "LTM": 22.0}
    # a benign R@1 of 0: the recall terms divide by it, so ARS has none of them; ERS's need no R@1
    zero = {**raw, "R@1": 0.0}
    assert scoring.resistance_terms(zero, "ARS", partial=True) == {"CA+": 25.0, "QA-": 44.5}
    assert "LTM" in scoring.resistance_terms(zero, "ERS", partial=True)
    full = {"CA+": 12.5, "CA-": 40.0, "QA+": 7.0, "QA-": 55.5, "TMA": 0.61, "ES:D": 0.8, "ES:R": 30.0, "LTM": 22.0,
            "GTM": 41.0, "GTT": 3.0, "R@1": 80.0}
    for name in scoring.SCORES:  # whole inputs: the same terms either way
        assert scoring.resistance_terms(full, name, partial=True) == scoring.resistance_terms(full, name)
    with pytest.raises(ValueError, match="missing"):
        scoring.resistance_terms(raw, "ARS")
