"""Leaderboard and comparison tables in the papers' layout: Markdown, CSV, LaTeX (booktabs) and HTML.

Columns (HM CVPR'22 / CA-TRIDE ICML'24 layout): ``R@1 R@2 mAP NMI CA+ CA- QA+ QA- ES:R LTM GTM GTT ERS ARS``,
after the identifying columns (rank, defense, backbone, training PGD steps, submitter or paper). Values are rounded
to one decimal (``TMA`` and ``ES:D`` to three) in every format, CSV included (unrounded, a CSV carried float noise
such as ``20.799999999999997``; the parquet versions keep every digit).

The best value of each column is marked (bold): the direction is per column (``CA-``, ``QA-``, ``TMA``, ``ES:D``
and the worst cases ``worst_case``, ``WC:candidate``, ``WC:query``, ``WC:recall``: lower is better; everything
else higher). Values equal after rounding tie. For ``ERS`` and
``ARS`` a row is also marked when its bootstrap confidence interval overlaps the best row's interval (a row without
an interval, e.g. a published one, counts as the point ``[v, v]``), so differences within the noise show as ties.

``values="terms"`` shows the resistance terms instead of raw attack results (the CA-TRIDE table's layout: every
column higher-is-better, ES:R/LTM/GTM relative to the benign R@1 as in ARS, TMA/ES:D as in ERS).

A table shows one measurement protocol (:mod:`robustbench_dml.protocols`) and names it (a line above the Markdown
table, the LaTeX title or a comment, the HTML caption, a CSV column). Rows of two protocols are never placed in
one table (:func:`protocol_of` refuses them); the papers' rows hold ``robrank`` numbers, so they only ever appear
beside ``robrank`` rows.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from robustbench_dml import columns, scoring
from robustbench_dml.columns import defense_title
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError

__all__ = ["TABLE_COLUMNS", "LOWER_IS_BETTER", "FORMATS", "protocol_of", "table_frame", "best_marks", "render",
           "render_rows",
           "write"]

#: the papers' metric columns, in order
TABLE_COLUMNS: tuple[str, ...] = ("R@1", "R@2", "mAP", "NMI", "CA+", "CA-", "QA+", "QA-", "ES:R", "LTM", "GTM",
                                  "GTT", "ERS", "ARS")
#: the worst cases: shares of broken queries, the same in ``values="terms"`` tables
_WORST = frozenset(columns.WORST_KEYS)
LOWER_IS_BETTER = columns.LOWER_IS_BETTER
_CI_COLUMNS = {"ERS": ("ERS_lo", "ERS_hi"), "ARS": ("ARS_lo", "ARS_hi")}
FORMATS = ("md", "csv", "latex", "html")
_ID_HEADERS = {"rank": "#", "dataset": "Data", "defense": "Defense", "backbone": "Backbone", "steps": "Steps",
               "by": "By", "budget": "Budget"}


def _decimals(col: str, values: str = "raw") -> int:
    """Raw TMA (cosine) and ES:D (distance) need three decimals; everything else, terms included, one."""
    return columns.BY_KEY[col].decimals if values == "raw" and col in columns.BY_KEY else 1


def _by(df: pd.DataFrame) -> pd.Series:
    """Who the row comes from: the submitter, ``<paper> (paper)`` for published rows, ``robustbench-dml
    (official, seed S)`` for the package's official rows (S: the training seed, which tells two seeds of one defense
    apart); a row measured with an overridden suite (``eligible`` false) says so (an official one how many queries
    it attacked)."""
    from robustbench_dml.leaderboard.official import is_official
    from robustbench_dml.leaderboard.recipes import training_seed

    out = []
    for reported, submitter, source, eligible, queries, recipe in zip(
            df["reported"], df["submitter"], df["source"], df["eligible"], df["num_queries"], df["recipe"]):
        if bool(reported) and isinstance(source, str):
            out.append(source.split(" (")[0] + " (paper)")
        elif is_official(source, reported):
            seed = training_seed(recipe if isinstance(recipe, str) else None)
            out.append(f"{submitter} (official" + ("" if seed is None else f", seed {seed}") +
                       ("" if bool(eligible) else f", {queries} queries") + ")")
        else:
            out.append(str(submitter) + ("" if bool(eligible) else " (partial suite)"))
    return pd.Series(out, index=df.index, dtype=pd.StringDtype())


def _terms(df: pd.DataFrame) -> pd.DataFrame:
    """Resistance terms (ARS terms; TMA and ES:D as ERS terms), elementwise; NaN where a value is missing."""
    out = df.copy()
    raw = {c: df[c].astype("float64") for c in columns.ATTACK_KEYS}
    raw["R@1"] = df["R@1"].astype("float64").where(df["R@1"] != 0)
    for c in columns.ATTACK_KEYS:
        out[c] = scoring.term(raw, c)
    return out


def protocol_of(df: pd.DataFrame) -> str | None:
    """The one protocol all rows of a leaderboard frame share (None for no rows); rows of two protocols, whose
    numbers are not comparable, are a UserError."""
    found = sorted(set(df["protocol"].dropna().tolist()))
    if len(found) > 1:
        raise UserError(f"these rows mix the {' and '.join(found)} protocols, whose numbers are not comparable; "
                        "show one protocol (--protocol)")
    return found[0] if found else None


def caption(protocol: str | None) -> str:
    return "" if protocol is None else f"Protocol: {protocol} ({P.DESCRIPTIONS[protocol]})"


#: the order every leaderboard and comparison table ranks its rows in (:func:`robustbench_dml.leaderboard.frames.sort_frame`)
RANKING = "ranked by ARS, then ERS (higher is more robust)"


def _suite_text(suite_id: str, version: int | None) -> str:
    from robustbench_dml.leaderboard.reference import REFERENCE_SUITE

    if suite_id == REFERENCE_SUITE:
        return "the papers' rows (their own suites)"
    try:
        from attacks.suites import suite_version

        s = suite_version(suite_id, version)
    except Exception:  # an unknown or plugin suite: its id alone
        return suite_id
    return f"{s.id} v{s.version} (eps {s.eps * 255:.0f}/255)"


def context(df: pd.DataFrame) -> str:
    """What a table shows, for its title line: datasets, suites with their eps, protocol and, when the rows are in
    leaderboard order, the ranking key."""
    from robustbench_dml.leaderboard.frames import sort_frame

    parts = [", ".join(sorted(set(df["dataset"].dropna()))) or "no rows"]
    suites = {(s, None if pd.isna(v) else int(v))
              for s, v in zip(df["suite_id"], df["suite_version"]) if not pd.isna(s)}
    parts += [_suite_text(s, v) for s, v in sorted(suites, key=lambda t: (t[0], t[1] or 0))]
    named = caption(protocol_of(df))
    if named:
        parts.append(named)
    if len(df) > 1 and sort_frame(df)["record_id"].tolist() == df["record_id"].tolist():
        parts.append(RANKING)
    return "; ".join(parts)


def table_frame(df: pd.DataFrame, *, columns: Sequence[str] | None = None, values: str = "raw") -> pd.DataFrame:
    """The table's data (unrounded): identifying columns, then ``columns`` (default :data:`TABLE_COLUMNS`).

    ``df`` is a leaderboard frame (store/reference schema). The row order is kept; ``rank`` numbers the rows 1..n.
    The confidence-interval columns of ERS/ARS are appended when those scores are shown (used for tie marking).
    """
    if values not in ("raw", "terms"):
        raise ValueError(f"values must be 'raw' or 'terms', got {values!r}")
    columns = tuple(columns) if columns is not None else TABLE_COLUMNS
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise ValueError(f"unknown table columns {', '.join(unknown)}")
    src = _terms(df) if values == "terms" else df
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    out["rank"] = pd.Series(np.arange(1, len(df) + 1), dtype="int64")
    if df["dataset"].nunique() > 1:
        out["dataset"] = df["dataset"].reset_index(drop=True).astype(pd.StringDtype())
    names = [d if bool(rep) else defense_title(d, cfg)
             for d, rep, cfg in zip(df["defense"], df["reported"], df["defense_config"])]
    out["defense"] = pd.Series(names, dtype=pd.StringDtype())
    out["backbone"] = df["backbone"].reset_index(drop=True).astype(pd.StringDtype())
    out["steps"] = df["steps"].reset_index(drop=True).astype("Int64")
    out["by"] = _by(df).reset_index(drop=True)
    if df["budget"].notna().any():
        out["budget"] = df["budget"].reset_index(drop=True).astype(pd.StringDtype())
    out["protocol"] = df["protocol"].reset_index(drop=True).astype(pd.StringDtype())
    for c in columns:
        out[c] = src[c].reset_index(drop=True).astype("float64")
    for score, (lo, hi) in _CI_COLUMNS.items():
        if score in columns:
            out[lo] = df[lo].reset_index(drop=True).astype("float64")
            out[hi] = df[hi].reset_index(drop=True).astype("float64")
    out["record_id"] = df["record_id"].reset_index(drop=True).astype(pd.StringDtype())
    return out


def best_marks(table: pd.DataFrame, columns: Sequence[str], *, values: str = "raw") -> dict[str, set[int]]:
    """Row positions to mark as best per column of a :func:`table_frame` (see the module docstring for ties)."""
    marks: dict[str, set[int]] = {}
    for c in columns:
        v = table[c].to_numpy(dtype="float64")
        ok = np.isfinite(v)
        if not ok.any():
            marks[c] = set()
            continue
        lower = c in LOWER_IS_BETTER and (values == "raw" or c in _WORST)
        rounded = np.round(v, _decimals(c, values))
        target = np.nanmin(np.where(ok, rounded, np.nan)) if lower else np.nanmax(np.where(ok, rounded, np.nan))
        chosen = {i for i in range(len(v)) if ok[i] and rounded[i] == target}
        if c in _CI_COLUMNS and _CI_COLUMNS[c][0] in table.columns:
            lo_c, hi_c = _CI_COLUMNS[c]
            lo = table[lo_c].to_numpy(dtype="float64")
            hi = table[hi_c].to_numpy(dtype="float64")
            lo = np.where(np.isfinite(lo), lo, v)
            hi = np.where(np.isfinite(hi), hi, v)
            best = int(np.nanargmax(np.where(ok, v, np.nan)))
            for i in range(len(v)):
                if ok[i] and lo[i] <= hi[best] and hi[i] >= lo[best]:
                    chosen.add(i)
        marks[c] = chosen
    return marks


def _fmt(x: float, col: str, values: str) -> str | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)) or pd.isna(x):
        return None
    return f"{x:.{_decimals(col, values)}f}"


def _cells(table: pd.DataFrame, columns: Sequence[str], values: str, highlight: str | None
           ) -> tuple[list[str], list[list[tuple[str | None, bool]]], list[bool]]:
    """Headers, rows of (text or None for missing, is_best) and per-row highlight flags."""
    ids = [c for c in ("rank", "dataset", "defense", "backbone", "steps", "by", "budget") if c in table.columns]
    headers = [_ID_HEADERS[c] for c in ids] + list(columns)
    marks = best_marks(table, columns, values=values)
    rows, flags = [], []
    for i in range(len(table)):
        row: list[tuple[str | None, bool]] = []
        for c in ids:
            v = table[c].iloc[i]
            row.append((None if pd.isna(v) else str(v), False))
        for c in columns:
            row.append((_fmt(table[c].iloc[i], c, values), i in marks[c]))
        rows.append(row)
        flags.append(highlight is not None and table["record_id"].iloc[i] == highlight)
    return headers, rows, flags


TEXT_HEADERS = frozenset({"Defense", "Backbone", "By", "Data", "Budget", "Run"})


def _marked_cells(rows, flags, *, escape, missing: str, bold, arrow) -> list[list[str]]:
    """Each row's cells escaped, the missing ones as ``missing``, best ones ``bold``; the highlighted row's first
    cell prefixed by ``arrow`` (None: no arrow)."""
    out = []
    for row, hl in zip(rows, flags):
        cells = []
        for j, (text, best) in enumerate(row):
            t = missing if text is None else escape(text)
            if best and text is not None:
                t = bold(t)
            if j == 0 and hl and arrow:
                t = f"{arrow} {t}"
            cells.append(t)
        out.append(cells)
    return out


def _md(headers, rows, flags) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join("---" if h in TEXT_HEADERS else "---:" for h in headers) + "|"]
    for cells in _marked_cells(rows, flags, escape=esc, missing="–", bold=lambda t: f"**{t}**", arrow="→"):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
              ">": r"\textgreater{}", "|": r"\textbar{}", "–": "--", "→": r"$\rightarrow$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESC.get(ch, ch) for ch in text)


def _latex(headers, rows, flags, standalone: bool, title: str | None) -> str:
    align = "".join("l" if h in TEXT_HEADERS else "r" for h in headers)
    out = []
    if standalone:
        out += [r"\documentclass{article}", r"\usepackage[T1]{fontenc}", r"\usepackage{booktabs}",
                r"\usepackage[margin=1cm,landscape]{geometry}", r"\begin{document}", r"\scriptsize"]
        if title:
            out.append(latex_escape(title) + r"\par\medskip")
    out += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    for cells in _marked_cells(rows, flags, escape=latex_escape, missing="--", bold=lambda t: rf"\textbf{{{t}}}",
                               arrow=r"$\rightarrow$"):
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if standalone:
        out.append(r"\end{document}")
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em}
table{border-collapse:collapse;font-size:0.9em}
th,td{padding:0.25em 0.6em;border-bottom:1px solid #ddd;text-align:right}
th{border-bottom:2px solid #333}
td.text,th.text{text-align:left}
tr.highlight td{background:#fff3b0}
caption{caption-side:top;text-align:left;font-weight:bold;margin-bottom:0.5em}"""


def _html(headers, rows, flags, title: str | None) -> str:
    title_text = html.escape(title or "robustbench-dml leaderboard")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{title_text}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>", "<table>",
           f"<caption>{title_text}</caption>", "<thead>", "<tr>"]
    out += [f'<th class="{"text" if h in TEXT_HEADERS else "num"}">{html.escape(h)}</th>' for h in headers]
    out += ["</tr>", "</thead>", "<tbody>"]
    marked = _marked_cells(rows, flags, escape=html.escape, missing="&ndash;", bold=lambda t: f"<strong>{t}</strong>",
                           arrow=None)
    for cells, hl in zip(marked, flags):
        out.append('<tr class="highlight">' if hl else "<tr>")
        out += [f'<td class="{"text" if h in TEXT_HEADERS else "num"}">{t}</td>' for h, t in zip(headers, cells)]
        out.append("</tr>")
    out += ["</tbody>", "</table>",
            "<p><small>Bold: best per column (ERS/ARS: ties within the bootstrap confidence interval). "
            "CA-, QA-, TMA, ES:D: lower is better.</small></p>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def render(df: pd.DataFrame, fmt: str = "md", *, highlight_record_id: str | None = None,
           columns: Sequence[str] | None = None, values: str = "raw", title: str | None = None,
           standalone: bool = False) -> str:
    """Render a leaderboard/comparison frame of one protocol as ``md``, ``csv``, ``latex`` or ``html`` text.

    ``highlight_record_id`` marks one row (an arrow in md/latex, a coloured row in html), e.g. the row just
    added. ``columns`` picks metric columns (default :data:`TABLE_COLUMNS`; ``TMA``/``ES:D``/the worst cases may be
    added). ``standalone`` wraps the LaTeX tabular in a compilable document (HTML is always a full page).
    Every format names what it shows (:func:`context`: datasets, suites and eps, protocol, ranking key): a line above
    the Markdown table, the LaTeX title or comment, the HTML caption; CSV has ``dataset``, ``suite`` and
    ``protocol`` columns and holds every value at its column's decimals, the CI bounds and ``record_id``, no marks.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    columns = tuple(columns) if columns is not None else TABLE_COLUMNS
    named = context(df)
    table = table_frame(df, columns=columns, values=values)
    if fmt == "csv":
        table.insert(1, "dataset_id", df["dataset"].reset_index(drop=True).astype(pd.StringDtype()))
        table.insert(2, "suite", df["suite_id"].reset_index(drop=True).astype(pd.StringDtype()))
        if "dataset" in table.columns:
            table = table.drop(columns=["dataset"])
        table = table.rename(columns={"dataset_id": "dataset"})
        for c in table.columns:  # each value at its column's decimals, as the other formats show it
            if table[c].dtype == "float64":
                table[c] = table[c].round(_decimals(c.removesuffix("_lo").removesuffix("_hi"), values))
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        return buf.getvalue()
    headers, rows, flags = _cells(table, columns, values, highlight_record_id)
    if fmt == "md":
        return (f"{named}\n\n" if named else "") + _md(headers, rows, flags)
    full_title = "; ".join(t for t in (title, named) if t) or None
    if fmt == "latex":
        return (f"% {named}\n" if named and not standalone else "") + _latex(headers, rows, flags, standalone,
                                                                            full_title)
    return _html(headers, rows, flags, full_title)


def render_rows(headers: Sequence[str], rows: Sequence[Sequence[str | None]], fmt: str, title: str,
                leading: Sequence[tuple[str, str]] = ()) -> str:
    """A table of ready-made cells (text, None for missing) in ``fmt``, named by ``title`` as :func:`render` names
    its tables (the line above, the comment, the caption); CSV gets the ``leading`` (column, value) pairs first on
    every row instead of the title."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([k for k, _ in leading] + list(headers))
        w.writerows([v for _, v in leading] + [c or "" for c in r] for r in rows)
        return buf.getvalue()
    cells = [[(c, False) for c in r] for r in rows]
    flags = [False] * len(rows)
    if fmt == "md":
        return f"{title}\n\n" + _md(headers, cells, flags)
    if fmt == "latex":
        return f"% {title}\n" + _latex(headers, cells, flags, False, None)
    return _html(headers, cells, flags, title)


def write(df: pd.DataFrame, path: str | Path, fmt: str | None = None, **kwargs) -> Path:
    """Render to ``path``; ``fmt`` defaults from the suffix (.md, .csv, .tex, .html)."""
    path = Path(path)
    if fmt is None:
        fmt = {".md": "md", ".csv": "csv", ".tex": "latex", ".html": "html", ".htm": "html"}.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the table format from {path.name!r}; pass fmt= (md, csv, latex, html)")
    if fmt == "latex":
        kwargs.setdefault("standalone", True)
    text = render(df, fmt, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
