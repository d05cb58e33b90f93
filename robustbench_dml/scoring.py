"""ERS and ARS: one 0-100 robustness number from the white-box ranking-attack suite (higher is more robust).

ERS (Empirical Robustness Score; RobRank T-PAMI, used by HM CVPR'22 and CA-TRIDE ICML'24) is the mean of 10
resistance terms; ARS (Adversarial Resistance Score; CA-TRIDE ICML'24) is the mean of 8 terms that measure the
recall-type attacks relative to the model's own benign R@1 and drop the two embedding-distance attacks (TMA, ES:D),
which reward a collapsed embedding. Both are summarised in ``docs/protocol.md`` (Scores); no term is clipped, exactly as
the published numbers were made.

Units of ``raw`` (the keys of the suite's results): ``CA+``, ``CA-``, ``QA+``, ``QA-`` percent of the gallery
(0-100); ``TMA`` cosine (-1..1); ``ES:D`` distance (0..2 on the unit sphere); ``ES:R``, ``LTM``, ``GTM``, ``GTT``
and the benign ``R@1`` percent (0-100).

Beyond the published scores: :func:`bootstrap_ci` (seeded percentile bootstrap over queries, all keys resampled
jointly) and :func:`worst_case` (share of queries on which at least one attack of the suite succeeded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ERS_KEYS", "ARS_KEYS", "ERS_TERMS", "ARS_TERMS", "SCORES", "THREATS", "ers", "ars", "score", "term",
           "term_inputs", "raw_from_term", "resistance_terms", "bootstrap_ci", "worst_case", "worst_case_by_threat",
           "aggregate", "batch_ranges"]

# term name -> (formula on the raw values). The formulas work on floats and on numpy arrays alike, so the point
# estimate and the bootstrap replicates use the very same code.
_Formula = Callable[[Mapping[str, Any]], Any]

_ERS_TERMS: dict[str, _Formula] = {
    "CA+": lambda r: 2.0 * r["CA+"],
    "CA-": lambda r: 100.0 - r["CA-"],
    "QA+": lambda r: 2.0 * r["QA+"],
    "QA-": lambda r: 100.0 - r["QA-"],
    "TMA": lambda r: 100.0 * (1.0 - r["TMA"]),
    "ES:D": lambda r: 100.0 * (2.0 - r["ES:D"]) / 2.0,
    "ES:R": lambda r: r["ES:R"],
    "LTM": lambda r: r["LTM"],
    "GTM": lambda r: r["GTM"],
    "GTT": lambda r: r["GTT"],
}

_ARS_TERMS: dict[str, _Formula] = {
    "CA+": lambda r: 2.0 * r["CA+"],
    "CA-": lambda r: 100.0 - r["CA-"],
    "QA+": lambda r: 2.0 * r["QA+"],
    "QA-": lambda r: 100.0 - r["QA-"],
    "ES:R": lambda r: 100.0 * r["ES:R"] / r["R@1"],
    "LTM": lambda r: 100.0 * r["LTM"] / r["R@1"],
    "GTM": lambda r: 100.0 * r["GTM"] / r["R@1"],
    "GTT": lambda r: r["GTT"],
}

# the inverse of each ARS term (raw result from the term and the benign R@1), for rows published as terms
_ARS_INVERSE: dict[str, Callable[[float, float], float]] = {
    "CA+": lambda t, r1: t / 2,
    "CA-": lambda t, r1: 100 - t,
    "QA+": lambda t, r1: t / 2,
    "QA-": lambda t, r1: 100 - t,
    "ES:R": lambda t, r1: t * r1 / 100,
    "LTM": lambda t, r1: t * r1 / 100,
    "GTM": lambda t, r1: t * r1 / 100,
    "GTT": lambda t, r1: t,
}

_TERMS = {"ERS": _ERS_TERMS, "ARS": _ARS_TERMS}
SCORES = tuple(_TERMS)
#: the terms each score averages, in the papers' order
ERS_TERMS: tuple[str, ...] = tuple(_ERS_TERMS)
ARS_TERMS: tuple[str, ...] = tuple(_ARS_TERMS)

#: raw keys each score needs
ERS_KEYS: tuple[str, ...] = tuple(_ERS_TERMS)
ARS_KEYS: tuple[str, ...] = ("CA+", "CA-", "QA+", "QA-", "ES:R", "LTM", "GTM", "GTT", "R@1")
_KEYS = {"ERS": ERS_KEYS, "ARS": ARS_KEYS}


def aggregate(values: Sequence[float], batch_sizes: Sequence[int], robrank_compat: bool = False) -> float:
    """Mean over queries, or (``robrank_compat``, quirk Q4) the unweighted mean of the per-batch means."""
    if sum(batch_sizes) != len(values):
        raise ValueError(f"batch sizes sum to {sum(batch_sizes)} but there are {len(values)} values")
    if not values:
        return math.nan
    if not robrank_compat:
        return math.fsum(values) / len(values)
    means, s = [], 0
    for b in batch_sizes:
        means.append(math.fsum(values[s:s + b]) / b)
        s += b
    return math.fsum(means) / len(means)


def batch_ranges(num_queries: int, batch_size: int) -> list[tuple[int, int]]:
    """Query index ranges [start, stop) of each batch, in loader order (the last one may be smaller)."""
    return [(s, min(num_queries, s + batch_size)) for s in range(0, num_queries, batch_size)]


def _score_name(score: str) -> str:
    name = str(score).upper()
    if name not in _TERMS:
        raise ValueError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    return name


def _number(raw: Mapping[str, Any], key: str, score: str) -> float:
    """``raw[key]`` as a finite float; ValueError naming the key when it is missing or not a finite number (or, for
    ARS, when it is a benign R@1 of 0 or less: the recall terms divide by it)."""
    if key not in raw:
        raise ValueError(f"{score} needs raw attack results for keys {key} (missing)")
    v = raw[key]
    if isinstance(v, bool):
        raise ValueError(f"{score}: raw[{key!r}] is a bool, expected a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{score}: raw[{key!r}] = {v!r} is not a number") from None
    if not math.isfinite(f):
        raise ValueError(f"{score}: raw[{key!r}] = {f} is not finite")
    if score == "ARS" and key == "R@1" and f <= 0.0:
        raise ValueError(f"ARS is undefined for benign R@1 = {f} (the recall terms divide by R@1)")
    return f


def _checked(raw: Mapping[str, Any], score: str) -> dict[str, float]:
    """The finite float values of the keys ``score`` needs; ValueError naming missing or bad keys."""
    missing = [k for k in _KEYS[score] if k not in raw]
    if missing:
        raise ValueError(f"{score} needs raw attack results for keys {', '.join(missing)} (missing)")
    return {k: _number(raw, k, score) for k in _KEYS[score]}


def resistance_terms(raw: Mapping[str, Any], score: str = "ERS", partial: bool = False) -> dict[str, float]:
    """The per-attack resistance terms that ``score`` averages, keyed by attack key, in the order of the papers.

    ERS: ``CA+ CA- QA+ QA- TMA ES:D ES:R LTM GTM GTT`` (10 terms); ARS: ``CA+ CA- QA+ QA- ES:R LTM GTM GTT`` (8 terms;
    ES:R, LTM and GTM relative to the benign R@1). Terms are on a 0-100 scale (100 = the attack had no effect) but
    are not clipped. ``partial``: the terms whose inputs ``raw`` holds and allows (a subset of the attacks; no
    recall term where the benign R@1 is 0) instead of a ValueError for the rest.
    """
    name = _score_name(score)
    if not partial:
        values = _checked(raw, name)
        return {term: float(f(values)) for term, f in _TERMS[name].items()}
    out: dict[str, float] = {}
    for term, f in _TERMS[name].items():
        try:
            values = {k: _number(raw, k, name) for k in term_inputs(term, name)}
        except ValueError:
            continue
        out[term] = float(f(values))
    return out


def term(raw: Mapping[str, Any], key: str, score: str | None = None) -> Any:
    """One resistance term, elementwise (floats, numpy arrays or pandas Series): that of ``score``, or by default
    the ARS term where ARS has one (recall terms relative to ``raw["R@1"]``) and the ERS term for TMA and ES:D.
    No checks: missing inputs raise KeyError, NaN propagates."""
    name = _score_name(score) if score is not None else ("ARS" if key in _ARS_TERMS else "ERS")
    return _TERMS[name][key](raw)


def term_inputs(key: str, score: str) -> tuple[str, ...]:
    """The raw keys one term of ``score`` reads."""
    return (key, "R@1") if _score_name(score) == "ARS" and key in ("ES:R", "LTM", "GTM") else (key,)


def raw_from_term(key: str, value: float, r1: float) -> float:
    """The raw result whose ARS term is ``value`` (given the benign ``r1``): the inverse of :func:`term`."""
    return _ARS_INVERSE[key](value, r1)


def score(raw: Mapping[str, Any], name: str = "ERS") -> float:
    """ERS or ARS by name (unrounded)."""
    terms = resistance_terms(raw, name)
    return math.fsum(terms.values()) / len(terms)


def ers(raw: Mapping[str, Any]) -> float:
    """Empirical Robustness Score: mean of the 10 ERS terms, unrounded (tables round to one decimal).

    Raises ValueError naming missing keys, for NaN or infinite inputs.
    """
    return score(raw, "ERS")


def ars(raw: Mapping[str, Any]) -> float:
    """Adversarial Resistance Score (CA-TRIDE, ICML'24): mean of the 8 ARS terms, unrounded; ``raw`` must hold ``R@1``.

    Raises ValueError naming missing keys, for NaN or infinite inputs, and for ``R@1 <= 0``.
    """
    return score(raw, "ARS")


def _per_query_matrix(per_query: Mapping[str, Sequence[float]], keys: Sequence[str], score: str) -> np.ndarray:
    missing = [k for k in keys if k not in per_query]
    if missing:
        raise ValueError(f"{score} bootstrap needs per-query results for keys {', '.join(missing)} (missing)")
    cols = []
    for k in keys:
        try:
            a = np.asarray(per_query[k], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{score} bootstrap: per_query[{k!r}] is not a sequence of numbers") from None
        if a.ndim != 1:
            raise ValueError(f"{score} bootstrap: per_query[{k!r}] must be one value per query (1-D), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{score} bootstrap: per_query[{k!r}] holds NaN or infinite values")
        cols.append(a)
    lengths = {k: len(c) for k, c in zip(keys, cols)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{score} bootstrap: per-query lists differ in length: {lengths}")
    if cols[0].size == 0:
        raise ValueError(f"{score} bootstrap needs at least one query")
    return np.stack(cols, axis=1)  # (n_queries, n_keys)


def bootstrap_ci(per_query: Mapping[str, Sequence[float]], *, score: str = "ERS", n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ERS or ARS over queries.

    ``per_query[key]`` holds one value per query in the units of the raw results (so its mean is the raw value);
    every key uses the same query order. Each replicate draws ``n`` query indices with replacement from a
    ``numpy.random.default_rng(seed)`` generator and applies them to **all keys jointly** (for ARS including the
    per-query benign ``R@1`` values, 0 or 100), then recomputes the score from the resampled means. Returns
    ``(lo, hi)``, the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the replicate scores. Memory is bounded by
    processing the replicates in chunks. Replicates whose ARS is undefined (resampled R@1 = 0) are dropped.
    """
    name = _score_name(score)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    keys = _KEYS[name]
    data = _per_query_matrix(per_query, keys, name)
    point = {k: float(v) for k, v in zip(keys, data.mean(axis=0))}
    _checked(point, name)  # same errors as the point estimate (e.g. R@1 = 0 for ARS)

    n = data.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(int(n_boot), 4_000_000 // max(n, 1)))
    scores: list[np.ndarray] = []
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        # how often each replicate drew each query, then the means as one product (not a (b, n, keys) gather)
        counts = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n)
        means = counts @ data / n  # (b, n_keys)
        cols = {k: means[:, j] for j, k in enumerate(keys)}
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = [f(cols) for f in _TERMS[name].values()]
            s = np.sum(terms, axis=0) / len(terms)
        scores.append(s)
        done += b
    all_scores = np.concatenate(scores)
    all_scores = all_scores[np.isfinite(all_scores)]
    if all_scores.size == 0:
        raise ValueError(f"{name} bootstrap: no replicate gave a finite score")
    alpha = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(all_scores, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def worst_case(success: Mapping[str, Sequence[bool]]) -> float:
    """Percent of queries on which at least one attack of the suite succeeded (AutoAttack-style worst case).

    ``success[attack_id]`` holds one bool per query, same query order for every attack. 0 means no attack ever
    succeeded; 100 means every query was broken by some attack. Lower is more robust.
    """
    if not success:
        raise ValueError("worst_case needs the per-query success flags of at least one attack")
    arrays = {}
    for k, v in success.items():
        a = np.asarray(v)
        if a.ndim != 1:
            raise ValueError(f"worst_case: success[{k!r}] must be one flag per query (1-D), got shape {a.shape}")
        if a.size and a.dtype != np.bool_:
            if not np.all(np.isin(a, (0, 1))):
                raise ValueError(f"worst_case: success[{k!r}] must hold booleans")
            a = a.astype(bool)
        arrays[k] = a.astype(bool)
    lengths = {k: a.size for k, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"worst_case: success lists differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("worst_case needs at least one query")
    broken = np.logical_or.reduce(np.stack(list(arrays.values())), axis=0)
    return 100.0 * float(broken.mean())


#: the suite's attacks grouped by what the attacker wants (success as each attack's docstring defines it):
#: candidate: a candidate enters the top 1% of its queries' rankings (CA+) or is pushed from it to the far half (CA-);
#: query: a query ranks a random item into its top 1% (QA+) or a top-1% item into its far half (QA-)
#: (:func:`attacks.base.rank_flip_success`);
#: recall: no item of the query's class is left in its top 1% (ES, LTM, GTM; :func:`attacks.base.recall_broken`).
#: GTT (the top-1 merely leaves the top 4) and the distance-only attacks (TMA, ES:D) are left out: GTT succeeds on
#: every model measured so far, so a worst case that includes it ranks nothing.
THREATS: dict[str, tuple[str, ...]] = {"candidate": ("CA+", "CA-"), "query": ("QA+", "QA-"),
                                       "recall": ("ES", "LTM", "GTM")}


def worst_case_by_threat(success: Mapping[str, Sequence[bool]],
                         benign_correct: Sequence[bool] | None = None) -> dict[str, float]:
    """:func:`worst_case` per threat of :data:`THREATS` (percent of queries broken by at least one of its attacks;
    lower is more robust), for the threats whose attacks all ran. With ``benign_correct`` (one flag per query:
    the clean top-1 is right) the recall threat is relative to the queries it can break, as ARS divides the
    recall attacks by the benign R@1: a less accurate model is not counted as more robust."""
    out = {threat: worst_case({a: success[a] for a in attacks})
           for threat, attacks in THREATS.items() if all(a in success for a in attacks)}
    if "recall" in out and benign_correct is not None:
        correct = np.asarray(benign_correct, dtype=bool)
        out["recall"] = float(out["recall"] / correct.mean()) if correct.any() else math.nan
    return out
