"""Figures (PNG, PDF or SVG, by the file's suffix): per-attack resistance terms of selected leaderboard rows, and
robustness against eps.

Figures are matplotlib ``Figure`` objects drawn by the Agg canvas directly (no display needed); the process's pyplot
backend and figure registry are never touched, so the plots are safe inside a notebook or GUI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustbench_dml import scoring

__all__ = ["plot_resistance", "plot_eps_curve"]


#: the figure formats, by the output file's suffix
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def _figure(width: float, height: float, **grid: Any):
    """A Figure (and its Axes: one, or a grid of ``subplots`` arguments), outside pyplot (nothing global changes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig, (fig.subplots(**grid) if grid else fig.add_subplot())


def _label(row: Mapping[str, Any]) -> str:
    from robustbench_dml.columns import defense_title

    reported = bool(row.get("reported", False))
    label = (str(row.get("defense", "?")) if reported else
             defense_title(str(row.get("defense", "?")), row.get("defense_config")))
    steps = row.get("steps")
    if steps is not None and not pd.isna(steps):
        label += f", {int(steps)}-step training PGD"
    if bool(row.get("reported", False)):
        src = row.get("source")
        if isinstance(src, str):
            label += f" [{src.split(',')[0]}]"
    else:
        who = row.get("submitter")
        if isinstance(who, str) and who:
            label += f" [{who}]"
    return label


def _row_terms(row: Mapping[str, Any], score: str) -> dict[str, float]:
    """Resistance terms of one row, NaN for the terms whose inputs are missing."""
    values = {}
    for k in scoring.ERS_KEYS + ("R@1",):
        v = row.get(k)
        if v is not None and not pd.isna(v):
            values[k] = float(v)
    if values.get("R@1", 1.0) <= 0:  # the recall terms are undefined
        del values["R@1"]
    names = scoring.ARS_TERMS if score == "ARS" else scoring.ERS_TERMS
    return {k: float(scoring.term(values, k, score)) if all(i in values for i in scoring.term_inputs(k, score))
            else math.nan for k in names}


def figure_format(path: str | Path) -> str:
    """The figure format of ``path`` from its suffix (:data:`FORMATS`); another suffix is a ValueError."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the figure format from {Path(path).name!r}; end it in .png, .pdf or .svg")
    return fmt


def _save(fig, path: str | Path) -> Path:
    fmt = figure_format(path)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt)
    return path


def plot_resistance(rows: pd.DataFrame | Sequence[Mapping[str, Any]], path: str | Path, *, score: str = "ARS",
                    title: str | None = None) -> Path:
    """Grouped bars of the per-attack resistance terms (0-100, higher is more robust) of each row, each bar's value
    written above it (a zero term is drawn as a tick, so it is seen), and beside them each row's score with its 95%
    bootstrap interval as an error bar.

    ``rows``: leaderboard rows of one protocol (a frame or mappings with the raw columns ``CA+ ... GTT``, ``R@1`` and
    ``protocol``, named in the title; rows of two protocols are refused); ``score`` picks the term set (``ARS``: 8
    terms, recall terms relative to R@1; ``ERS``: 10 terms). Terms whose inputs a row lacks are left out (no bar).
    The format follows the suffix of ``path`` (.png, .pdf, .svg).
    """
    from robustbench_dml.leaderboard.tables import caption, protocol_of

    figure_format(path)
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame([dict(r) for r in rows])
    if frame.empty:
        raise ValueError("plot_resistance needs at least one row")
    named = caption(protocol_of(frame)) if "protocol" in frame.columns else ""
    records = frame.to_dict("records")
    score = score.upper()
    if score not in scoring.SCORES:
        raise ValueError(f"unknown score {score!r}; use one of {', '.join(scoring.SCORES)}")
    names = list(scoring.ARS_TERMS if score == "ARS" else scoring.ERS_TERMS)
    n = len(records)
    width = 0.8 / n
    x = np.arange(len(names))
    fig, (ax, side) = _figure(max(8.0, 1.0 * len(names) + 0.4 * n) + 1.6, 5.0, ncols=2,
                              gridspec_kw={"width_ratios": [len(names), 1.6]})
    colors = [f"C{i % 10}" for i in range(n)]
    for i, row in enumerate(records):
        terms = [_row_terms(row, score)[k] for k in names]
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, terms, width, label=_label(row), color=colors[i])
        ax.bar_label(bars, labels=["" if math.isnan(t) else f"{t:.0f}" for t in terms], fontsize=6, padding=1)
        zero = [p for p, t in zip(pos, terms) if t == 0]
        ax.plot(zero, [0.0] * len(zero), ls="none", marker="_", ms=max(4.0, 40 * width), mew=2.5, color=colors[i])
        s, lo, hi = (row.get(c) for c in (score, f"{score}_lo", f"{score}_hi"))
        if s is not None and not pd.isna(s):
            err = None if lo is None or pd.isna(lo) else [[float(s) - float(lo)], [float(hi) - float(s)]]
            side.bar([i], [float(s)], 0.7, color=colors[i], yerr=err, capsize=4)
            side.text(i, float(s) / 2, f"{float(s):.1f}", ha="center", va="center", fontsize=7, color="white")
    ax.axhline(100.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 108)
    ax.set_ylabel(f"{score} resistance term (100 = no effect)")
    ax.set_title((title or f"Per-attack resistance terms ({score})") + (f"\n{named}" if named else ""), fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(n, 2), frameon=False)
    side.set_xticks(range(n), [str(i + 1) for i in range(n)])
    side.set_xlabel("row (legend order)")
    side.set_title(f"{score}, 95% interval", fontsize=9)
    side.set_ylim(0, 100)
    return _save(fig, path)


def plot_eps_curve(results: Mapping[str, Sequence[tuple[float, Mapping[str, float]]]], path: str | Path, *,
                   key: str = "ERS", title: str | None = None, protocol: str | None = None) -> Path:
    """Robustness against the attack budget eps, one line per model.

    ``results``: model label -> ``[(eps, raw), ...]`` with eps in [0, 1] pixel units and ``raw`` the raw results
    of an evaluation at that eps (the ``raw`` dict of the evaluation JSON). ``key``: ``ERS`` or ``ARS`` (computed
    with :mod:`robustbench_dml.scoring`) or a raw key such as ``CA+`` or ``ES:R`` (plotted in its own unit).
    The x axis shows eps in 1/255 units; ``protocol`` (the one every ``raw`` was measured under) is named in the
    title. The format follows the suffix of ``path`` (.png, .pdf, .svg).
    """
    from robustbench_dml.leaderboard.tables import caption

    figure_format(path)
    if not results:
        raise ValueError("plot_eps_curve needs at least one model")
    fig, ax = _figure(6.0, 4.0)
    for label, points in results.items():
        pts = sorted(points, key=lambda p: float(p[0]))
        if not pts:
            raise ValueError(f"model {label!r} has no (eps, raw) points")
        xs, ys = [], []
        for eps, raw in pts:
            if key.upper() in scoring.SCORES:
                y = scoring.score(raw, key.upper())
            else:
                if key not in raw:
                    raise ValueError(f"model {label!r} at eps {eps}: raw results lack {key!r}")
                y = float(raw[key])
            xs.append(float(eps) * 255.0)
            ys.append(y)
        ax.plot(xs, ys, marker="o", label=str(label))
    ax.set_xlabel("eps (x 1/255, L-inf in [0,1] pixels)")
    ax.set_ylabel(key)
    ax.set_title((title or f"{key} against the attack budget") + (f"\n{caption(protocol)}" if protocol else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
