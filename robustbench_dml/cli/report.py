"""Terminal rendering of evaluation results (rich tables); plain text when not on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from robustbench_dml import scoring
from robustbench_dml.columns import ATTACK_KEYS, BENIGN_KEYS, BY_KEY


def console() -> Console:
    """Rich output; off a terminal (logs, CI) 120 columns wide, so a table is never folded at 80."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


def benign_table(benign: Mapping[str, float], title: str = "benign retrieval (percent)") -> Table:
    t = Table(title=title)
    cells = [_num(benign.get(k), 1) for k in BENIGN_KEYS]
    for k in BENIGN_KEYS:
        t.add_column(k, justify="right")
    # the collapse diagnostic, distances of normalised embeddings in [0, 2] and their ratio, not percentages
    for key, name in (("intra_class_distance", "intra d"), ("inter_class_distance", "inter d"),
                      ("entanglement", "entangl.")):
        if benign.get(key) is not None:
            t.add_column(name, justify="right")
            cells.append(_num(benign[key], 3))
    t.add_row(*cells)
    return t


def attack_table(result, protocol: str | None = None) -> Table:
    """Raw result, clean value and the ERS / ARS resistance term of every attack key, then the scores, of one
    protocol (default: the result's shown one) of an :class:`~robustbench_dml.results.EvaluationResult`."""
    protocol = protocol or result.protocol
    block = result.block(protocol)
    raw = block["raw"]
    terms = {s: scoring.resistance_terms(raw, s, partial=True) for s in ("ERS", "ARS")}
    clean = block["clean"]
    t = Table(title=f"attacks ({result.suite['id']}, {result.num_queries} queries, {protocol} protocol)")
    cols = ("attack", "raw", "clean", "better", "ERS term", "ARS term") if clean else \
        ("attack", "raw", "better", "ERS term", "ARS term")
    for col in cols:  # fits 80 columns: short labels, the first column never folded
        t.add_column(col, justify="left" if col in ("attack", "better") else "right", no_wrap=col == "attack")
    for k in ATTACK_KEYS:
        if k not in raw:
            continue
        digits = BY_KEY[k].decimals
        cells = [k, _num(raw[k], digits)] + ([_num(clean.get(k), digits)] if clean else []) + [
            "higher" if BY_KEY[k].higher_is_better else "lower", _num(terms["ERS"].get(k), 1), _num(terms["ARS"].get(k), 1)]
        t.add_row(*cells)
    scores = block["scores"]
    for s in ("ERS", "ARS"):
        ci = scores.get(f"{s}_ci")
        ci_txt = f" [{ci[0]:.1f},{ci[1]:.1f}]" if ci and ci[0] is not None else ""
        t.add_row(*_pad([f"[bold]{s}[/bold]", f"[bold]{_num(scores.get(s), 1)}[/bold]{ci_txt}"], len(cols)))
    # percent of queries broken: per threat first (they tell models apart), by any attack last (near 100 for
    # every model on these suites, so it is no headline)
    for threat, value in (scores.get("worst_case_by_threat") or {}).items():
        t.add_row(*_pad([f"WC {threat} %", _num(value, 1)], len(cols)))
    if scores.get("worst_case") is not None:
        t.add_row(*_pad(["WC any attack %", _num(scores["worst_case"], 1)], len(cols)))
    return t


def protocol_lines(result) -> list[str]:
    """One line per measured protocol: its ERS and ARS, and what it is."""
    from robustbench_dml.protocols import DESCRIPTIONS

    out = []
    for p in result.protocols:
        sc = result.block(p)["scores"]
        out.append(f"{p:>9}: ERS {_num(sc.get('ERS'), 1)}, ARS {_num(sc.get('ARS'), 1)}  ({DESCRIPTIONS[p]})")
    published = result.engine_raw("pgd")
    if published is not None:
        pub = {name: _score_or_none(scoring.score, published, name) for name in scoring.SCORES}
        out.append(f"{'pgd':>9}: ERS {_num(pub['ERS'], 1)}, ARS {_num(pub['ARS'], 1)}  (the published suite's "
                   f"attacks alone, same queries and targets: what {result.suite['id']} adds is the difference)")
        from attacks.engine import Engine

        params = result.suite["params"]
        ladder = Engine(**params["engine"]).ladder(params["steps"])
        if "+s" in ladder[-1]:  # the step before the search: the gradient runs alone
            grad = ladder[-2]
            g = {name: _score_or_none(scoring.score, result.engine_raw(grad), name) for name in scoring.SCORES}
            out.append(f"{grad:>9}: ERS {_num(g['ERS'], 1)}, ARS {_num(g['ARS'], 1)}  (the PGD and APGD runs "
                       "alone: what the random search adds is the difference)")
        suspected = result.extra["engine"].get("masking_suspected") or []
        if suspected:
            out.append(f"   note: gradient masking is likely on {', '.join(suspected)} (the gradient-free search beat "
                       "the gradient attacks, or the loss had no input gradient on many queries): treat this model's "
                       "numbers as upper bounds")
        if result.extra["engine"].get("randomised"):
            out.append("   note: the model is randomised (two forward passes of the same images differ): its "
                       "gradients need expectation over transformation, evaluate with an engine whose eot is > 1")
    suspect = (result.extra.get("timing") or {}).get("suspect") or []
    if suspect:
        out.append(f"   note: the time of {', '.join(suspect)} is below its lower bound (forward+backward x iterations): "
                   "the machine's load changed while the bound was measured; treat those timings as suspect")
    return out


def _score_or_none(fn, raw, name):
    try:
        return fn(raw, name)
    except ValueError:  # a subset of attacks
        return None


def _num(v: Any, digits: int) -> str:
    if v is None:
        return "-"
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _pad(cells: list[str], n: int) -> list[str]:
    return cells + [""] * (n - len(cells))
