"""PNG figures: per-attack resistance terms of selected leaderboard rows, and robustness against eps.

matplotlib with the non-interactive Agg backend (no display needed); every figure is closed after saving.
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(row: Mapping[str, Any]) -> str:
    label = str(row.get("defense", "?"))
    steps = row.get("steps")
    if steps is not None and not pd.isna(steps):
        label += f" (eta {int(steps)})"
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
    names = tuple(scoring.resistance_terms(_IDEAL, score))
    raw = {k: row.get(k) for k in scoring.ERS_KEYS + ("R@1",)}
    try:
        present = {k: float(v) for k, v in raw.items() if v is not None and not pd.isna(v)}
    except (TypeError, ValueError):
        present = {}
    out = {}
    for name in names:
        probe = dict(_IDEAL)
        needed = ("R@1", name) if score == "ARS" and name in ("ES:R", "LTM", "GTM") else (name,)
        if all(k in present for k in needed):
            probe.update({k: present[k] for k in needed})
            out[name] = scoring.resistance_terms(probe, score)[name]
        else:
            out[name] = math.nan
    return out


_IDEAL = {"CA+": 50.0, "CA-": 0.0, "QA+": 50.0, "QA-": 0.0, "TMA": 0.0, "ES:D": 0.0, "ES:R": 100.0, "LTM": 100.0,
          "GTM": 100.0, "GTT": 100.0, "R@1": 100.0}


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_resistance(rows: pd.DataFrame | Sequence[Mapping[str, Any]], path: str | Path, *, score: str = "ARS",
                    title: str | None = None) -> Path:
    """Grouped bars of the per-attack resistance terms (0-100, higher is more robust) of each row.

    ``rows``: leaderboard rows of one protocol (a frame or mappings with the raw columns ``CA+ ... GTT``, ``R@1`` and
    ``protocol``, named in the title; rows of two protocols are refused); ``score`` picks the term set (``ARS``: 8
    terms, recall terms relative to R@1; ``ERS``: 10 terms). Terms whose inputs a row lacks are left out (no bar).
    The legend shows the row's score when present.
    """
    from robustbench_dml.leaderboard.tables import caption, protocol_of

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame([dict(r) for r in rows])
    if frame.empty:
        raise ValueError("plot_resistance needs at least one row")
    named = caption(protocol_of(frame)) if "protocol" in frame.columns else ""
    records = frame.to_dict("records")
    score = score.upper()
    names = list(scoring.resistance_terms(_IDEAL, score))
    plt = _pyplot()
    n = len(records)
    width = 0.8 / n
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 0.3 * n), 4.0), dpi=120)
    try:
        for i, row in enumerate(records):
            terms = _row_terms(row, score)
            label = _label(row)
            s = row.get(score)
            if s is not None and not pd.isna(s):
                label += f": {score} {float(s):.1f}"
            ax.bar(x - 0.4 + width * (i + 0.5), [terms[k] for k in names], width, label=label)
        ax.axhline(100.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, names)
        ax.set_ylabel(f"{score} resistance term (100 = no effect)")
        ax.set_title((title or f"Per-attack resistance terms ({score})") + (f"\n{named}" if named else ""),
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(n, 2))
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_eps_curve(results: Mapping[str, Sequence[tuple[float, Mapping[str, float]]]], path: str | Path, *,
                   key: str = "ERS", title: str | None = None, protocol: str | None = None) -> Path:
    """Robustness against the attack budget eps, one line per model.

    ``results``: model label -> ``[(eps, raw), ...]`` with eps in [0, 1] pixel units and ``raw`` the raw results
    of an evaluation at that eps (the ``raw`` dict of the evaluation JSON). ``key``: ``ERS`` or ``ARS`` (computed
    with :mod:`robustbench_dml.scoring`) or a raw key such as ``CA+`` or ``ES:R`` (plotted in its own unit).
    The x axis shows eps in 1/255 units; ``protocol`` (the one every ``raw`` was measured under) is named in the
    title.
    """
    from robustbench_dml.leaderboard.tables import caption

    if not results:
        raise ValueError("plot_eps_curve needs at least one model")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    try:
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
    finally:
        plt.close(fig)
