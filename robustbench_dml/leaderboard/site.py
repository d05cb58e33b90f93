"""The static leaderboard site: plain HTML pages written from records, readable without a server.

``dmlbench leaderboard site --output DIR`` writes (:func:`write_site`):

- ``index.html``: every board (dataset x suite x protocol) with its row count, and the headline, the gap between
  each model's published-suite and strong-suite ARS (``gap.html``);
- ``boards/<dataset>-<suite>-<protocol>.html``: every row of the board in leaderboard order (ARS, then ERS),
  its 95% bootstrap intervals, budget and worst cases per threat, sortable by any column (a few lines of script);
  under the ``robrank`` protocol the papers' published rows sit beside the measured ones, marked ``paper``;
  official rows are marked ``official``;
- ``models/<record_id>.html``: a measured row's card: provenance, the recipe's commands and configuration, the
  hashes, every protocol's resistance terms as an inline SVG bar chart with ERS and ARS, and the same checkpoint's
  rows under other suites.

Every page names the dataset, the suite (its eps) and the protocol of each table, and the ranking key.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robustbench_dml import columns, scoring
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError
from robustbench_dml.files import atomic_write_text
from robustbench_dml.leaderboard.official import is_official
from robustbench_dml.leaderboard.recipes import training_seed
from robustbench_dml.leaderboard.records import Record
from robustbench_dml.leaderboard.tables import RANKING as TABLE_RANKING

__all__ = ["write_site", "board_key", "RANKING"]

RANKING = f"{TABLE_RANKING}; a row's interval is its 95% bootstrap interval over queries"
#: the terms the model card draws: ARS's eight, then TMA and ES:D as ERS has them
_BARS = scoring.ARS_TERMS + ("TMA", "ES:D")
_RAW = ("R@1",) + columns.ATTACK_KEYS
#: the per-threat worst cases a board shows (percent of queries broken by any attack of that threat), by key
_WC = {"WC:candidate": "WC candidate %", "WC:query": "WC query %", "WC:recall": "WC recall %"}
_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#1a1a1a}p,dl,pre{max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}a{color:#0645ad}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{padding:.25em .55em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}th.t,td.t{text-align:left}
td.name{white-space:normal;min-width:19em}
tr.paper td{background:#fff8e1}tr.official td.t:first-of-type{font-weight:600}
.tag{font-size:.8em;padding:0 .35em;border-radius:3px;margin-left:.3em;display:inline-block;white-space:nowrap}
.tag.paper{background:#f0c36d}.tag.official{background:#8fd19e}.tag.partial{background:#ddd}
.tag.seed{background:#cfe0f5}
.ci{color:#777;font-size:.85em}caption{text-align:left;font-weight:600;padding:.3em 0}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}.note{color:#555}.wide{overflow-x:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}"""
_SORT = """document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],r=Array.from(b.rows),d=th.dataset.dir==='desc'?'asc':'desc';
t.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir')});th.dataset.dir=d;
r.sort(function(x,y){var a=x.cells[i].dataset.v,c=y.cells[i].dataset.v;if(a===undefined){a=x.cells[i].textContent;
c=y.cells[i].textContent;return d==='asc'?a.localeCompare(c):c.localeCompare(a)}a=parseFloat(a);c=parseFloat(c);
if(isNaN(a))return 1;if(isNaN(c))return -1;return d==='asc'?a-c:c-a});r.forEach(function(x){b.appendChild(x)})})});"""


def board_key(dataset: str, suite: str, protocol: str) -> str:
    return f"{dataset}-{suite}-{protocol}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(v: Any, decimals: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{decimals}f}"


def _suite_line(rec: Record) -> str:
    from attacks.suites import SUITES, suite_version

    if rec.suite_id not in SUITES or rec.suite_version is None:
        return "the papers' published rows (each paper's own suite and eps)"
    try:
        s = suite_version(rec.suite_id, rec.suite_version)
    except UserError:  # a version this installation does not have (a store written by a newer one)
        return f"{_suite_name(rec)} (not in this installation; upgrade robustbench-dml to see its parameters)"
    return f"{s.id} v{s.version}: eps {s.eps * 255:.0f}/255 ({s.eps:.4f}); {s.description}"


def _suite_name(rec: Record) -> str:
    """The suite and its version as pages name it (``rankaa28 v2``)."""
    return rec.suite_id if rec.suite_version is None else f"{rec.suite_id} v{rec.suite_version}"


def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><link rel=\"stylesheet\" href=\"{up}style.css\">"
            f"</head><body><p><a href=\"{up}index.html\">robustbench-dml leaderboards</a></p>\n<h1>{_e(title)}</h1>\n"
            f"{body}\n<script src=\"{up}sort.js\"></script></body></html>\n")


def _tags(rec: Record) -> str:
    out = ""
    if rec.reported:
        out += '<span class="tag paper">paper</span>'
    elif is_official(rec.source, rec.reported):
        out += '<span class="tag official">official</span>'
    seed = None if rec.reported else training_seed(rec.recipe)
    if seed is not None:  # two seeds of one defense otherwise read as the same row until the Seed column
        out += f'<span class="tag seed">seed {_e(seed)}</span>'
    if not rec.reported and not rec.eligible:
        out += f'<span class="tag partial">{rec.num_queries} queries</span>'
    return out


def _by(rec: Record) -> str:
    if rec.reported:
        return (rec.source or "paper").split(" (")[0]
    return rec.submitter


def _row_order(item: tuple[Record, str]) -> tuple:
    s = item[0].protocols[item[1]]
    return (s.ars is None, -(s.ars or 0.0), s.ers is None, -(s.ers or 0.0), item[0].record_id)


def _board_suite(suite: str, rows: Sequence[tuple[Record, str]]) -> tuple[Record, str]:
    """The row that names a board's suite version (its first measured row; a papers' board has none) and the name
    the pages give the suite (``rankaa28 v2``; a papers' board its key)."""
    first = next((r for r, _ in rows if not r.reported), rows[0][0])
    return first, suite if first.reported else _suite_name(first)


def _board(dataset: str, suite: str, protocol: str, rows: Sequence[tuple[Record, str]],
           base: tuple[str, dict[str, float | None]] | None = None) -> str:
    """One board's page. ``base``: for a strong suite, its published suite and that suite's ARS (corrected protocol)
    per checkpoint sha256, shown beside each row's ARS."""
    # the ranking key and its companions beside the name, so they are on screen without scrolling
    # worst cases per threat (the share of queries any attack broke is near 100 for every model: no ranking key)
    head = ["#", "Defense", "ARS", *([f"ARS {base[0]}"] if base else []), "ERS", *_WC.values(), "Backbone", "Steps",
            "By", "Budget", "Seed", *_RAW]
    text_cols = {"Defense", "Backbone", "By", "Budget"}
    th = "".join(f'<th class="{"t" if h in text_cols else ""}">{_e(h)}</th>' for h in head)
    body = []
    for i, (rec, protocol_) in enumerate(sorted(rows, key=_row_order), 1):
        s = rec.protocols[protocol_]
        raw = {"R@1": rec.r1, **{k: s.columns()[k] for k in columns.ATTACK_KEYS}}
        defense = _e(_name(rec))
        if not rec.reported:
            defense = f'<a href="../models/{_e(rec.record_id)}.html">{defense}</a>'
        cells = [f'<td data-v="{i}">{i}</td>', f'<td class="t name">{defense}{_tags(rec)}</td>']
        for score in ("ARS", "ERS"):
            v, lo, hi = (getattr(s, n) for n in (score.lower(), f"{score.lower()}_lo", f"{score.lower()}_hi"))
            ci = "" if lo is None else f' <span class="ci">[{lo:.1f}, {hi:.1f}]</span>'
            cells.append(f'<td data-v="{"" if v is None else v}">{_num(v)}{ci}</td>')
            if score == "ARS" and base:
                b = base[1].get(rec.checkpoint_sha256)
                cells.append(f'<td data-v="{"" if b is None else b}">{_num(b)}</td>')
        for k in _WC:
            v = s.columns()[k]
            cells.append(f'<td data-v="{"" if v is None else v}">{_num(v)}</td>')
        steps = "" if rec.steps is None else rec.steps
        cells += [f'<td class="t">{_e(rec.backbone)}</td>', f'<td data-v="{steps}">'
                 f'{"–" if rec.steps is None else rec.steps}</td>', f'<td class="t">{_e(_by(rec))}</td>',
                 f'<td class="t">{_e(rec.budget or "–")}</td>']
        seed = training_seed(rec.recipe)
        cells.append(f'<td data-v="{"" if seed is None else seed}">{"–" if seed is None else seed}</td>')
        for k in _RAW:
            v = raw[k]
            cells.append(f'<td data-v="{"" if v is None else v}">{_num(v, columns.BY_KEY[k].decimals)}</td>')
        cls = "paper" if rec.reported else "official" if is_official(rec.source, rec.reported) else "local"
        body.append(f'<tr class="{cls}" data-record="{_e(rec.record_id)}">{"".join(cells)}</tr>')
    first, named = _board_suite(suite, rows)
    caption = f"{dataset} / {named} / protocol {protocol}"
    table = (f'<div class="wide"><table class="sortable" data-protocol="{_e(protocol)}"><caption>{_e(caption)}'
             f"</caption><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    notes = (f"<p>Dataset <b>{_e(dataset)}</b>; suite {_e(_suite_line(first))}; protocol <b>{_e(protocol)}</b>: "
             f"{_e(P.DESCRIPTIONS[protocol])}. Rows are {_e(RANKING)}. Raw attack results in the papers' units "
             "(CA/QA: percent of the gallery; TMA: cosine; ES:D: distance; the rest: percent of queries). "
             "Click a column to sort.</p>")
    if base:
        notes += (f"<p>ARS {_e(base[0])}: the same weights' ARS under the published suite this one strengthens "
                  f"(protocol {P.CORRECTED}; empty where it has no row of them).</p>")
    if protocol == P.ROBRANK:
        notes += ('<p class="note">Rows marked <span class="tag paper">paper</span> are the numbers the papers '
                  "printed (measured with RobRank's code, often at other budgets); the others were measured here "
                  "under the same protocol.</p>")
    if any(r.budget == "cpu" for r, _ in rows):
        notes += ('<p class="note">Budget <b>cpu</b>: trained on the project\'s CPU-study budget (a subset of the '
                  "training split, fewer epochs), not the published schedule (<b>full</b>).</p>")
    return _page(caption, notes + table, 1)


def _svg_bars(values: dict[str, float | None]) -> str:
    """A horizontal bar per resistance term (0-100), its value written beside it; a zero bar is drawn as a tick."""
    w, bar_h, left, scale = 420, 18, 48, 3.2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{bar_h * len(values) + 6}" '
             f'role="img" aria-label="resistance terms">']
    for i, (k, v) in enumerate(values.items()):
        y = 3 + i * bar_h
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{_e(k)}</text>')
        if v is None:
            parts.append(f'<text x="{left}" y="{y + 13}" font-size="12" fill="#777">not measured</text>')
            continue
        length = max(min(v, 100.0), 0.0) * scale
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{max(length, 1.5):.1f}" height="{bar_h - 5}" '
                     f'fill="{"#4a7ebb" if length else "#c0392b"}"/>')
        parts.append(f'<text x="{left + length + 5:.1f}" y="{y + 13}" font-size="12">{v:.1f}</text>')
    return "".join(parts) + "</svg>"


#: a training log's columns the model page shows, where the log has them (history.jsonl keys -> heading, decimals)
_LOG = {"loss": ("loss", 4), "R@1": ("R@1", 2), "intra_class_distance": ("intra-class", 3),
        "inter_class_distance": ("inter-class", 3), "adv_gain": ("adv_gain", 3), "adv_gain_cap": ("adv_gain CAP", 3),
        "adv_gain_anp": ("adv_gain ANP", 3), "lam": ("lambda", 2), "seconds": ("seconds", 0)}


def _training(history: Sequence[Mapping[str, Any]]) -> str:
    """The training's per-epoch log as a table (an epoch logged twice, by a resumed run, shows its last record)."""
    epochs = {h["epoch"]: h for h in history}
    keys = [k for k in _LOG if any(isinstance(h.get(k), (int, float)) for h in epochs.values())]
    head = "".join(f"<th>{_e(_LOG[k][0])}</th>" for k in keys)
    def cell(v: Any, decimals: int) -> str:
        return _num(v if isinstance(v, (int, float)) else None, decimals)

    rows = "".join(f"<tr><td>{e}</td>" + "".join(f"<td>{cell(h.get(k), _LOG[k][1])}</td>" for k in keys) + "</tr>"
                   for e, h in sorted(epochs.items()))
    return ("<h2>Training</h2><p class=\"note\">Per epoch, from the training's own log: the loss, benign R@1 and the "
            "mean intra- and inter-class distance of the normalised test embeddings (a falling inter-class distance "
            "is a collapsing space), the adversary's mean loss gain where the defense attacks.</p>"
            '<table data-protocol="none"><caption>Training log (clean test embeddings: no attack, no protocol)'
            f"</caption><thead><tr><th>epoch</th>{head}</tr></thead><tbody>{rows}</tbody></table>")


def _name(rec: Record) -> str:
    """A row's defense as tables name it: the paper's own name for a printed row, else the title and variant."""
    return rec.defense if rec.reported else columns.defense_title(rec.defense, rec.defense_config)


def _model(rec: Record, siblings: Sequence[Record], history: Sequence[Mapping[str, Any]] = ()) -> str:
    facts = [("record", rec.record_id), ("dataset", rec.dataset), ("suite", _suite_line(rec)),
             ("defense", _name(rec)), ("backbone", rec.backbone), ("training PGD steps", rec.steps),
             ("by", rec.submitter + (" (official)" if is_official(rec.source, rec.reported) else "")),
             ("budget", rec.budget or "not stated"), ("training seed", training_seed(rec.recipe)),
             ("evaluation seed", rec.seed), ("queries attacked", rec.num_queries),
             ("eligible (whole suite)", rec.eligible), ("device", rec.device), ("created", rec.created),
             ("weights sha256", rec.checkpoint_sha256), ("suite hash", rec.suite_hash),
             ("benign R@1 / mAP@R / NMI", f"{_num(rec.r1)} / {_num(rec.map_at_r)} / {_num(rec.nmi)}"),
             ("intra- / inter-class distance",
              f"{_num(rec.intra_class_distance, 3)} / {_num(rec.inter_class_distance, 3)}"),
             ("entanglement", _num(rec.entanglement, 3))]
    body = ["<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e('–' if v is None else v)}</dd>" for k, v in facts) + "</dl>"]
    for protocol, s in rec.protocols.items():
        raw = s.raw()
        terms = {}
        for k in _BARS:
            try:
                terms[k] = scoring.term(raw, k, "ERS" if k in ("TMA", "ES:D") else "ARS")
            except (KeyError, ZeroDivisionError):
                terms[k] = None
        ci = lambda lo, hi: "" if lo is None else f" [{lo:.1f}, {hi:.1f}]"  # noqa: E731
        wc = s.columns()
        worst = ", ".join(f"{k.split(':')[1]} {_num(wc[k])}" for k in _WC)
        body.append(f"<h2>Protocol {_e(protocol)}: ERS {_num(s.ers)}{ci(s.ers_lo, s.ers_hi)}, ARS {_num(s.ars)}"
                    f"{ci(s.ars_lo, s.ars_hi)}</h2><p>Queries broken per threat (%): {worst}; by any attack "
                    f"{_num(s.worst_case)}.</p>")
        body.append(f"<p class=\"note\">{_e(P.DESCRIPTIONS[protocol])}. Resistance terms, 0-100, higher is more "
                    "robust (ARS's eight; TMA and ES:D as ERS has them).</p>" + _svg_bars(terms))
    if history:
        body.append(_training(history))
    others = [r for r in siblings if r.record_id != rec.record_id]
    if others:
        body.append("<h2>The same weights under other suites</h2><ul>" + "".join(
            f'<li><a href="{_e(r.record_id)}.html">{_e(_suite_name(r))}</a>: ARS '
            f"{_num(r.scores().ars)}, ERS {_num(r.scores().ers)} ({_e(r.protocol)})</li>" for r in others) + "</ul>")
    if rec.recipe:
        recipe = json.loads(rec.recipe)
        root = (recipe.get("train") or {}).get("data_root")
        where = (" (<code>--data-root</code> names the folder the row was built from; give yours, with the files "
                 "whose sha256 the configuration lists)" if root else "")
        body.append("<h2>Recipe</h2><p>Rebuild this row with <code>dmlbench reproduce "
                    f"{_e(rec.record_id)}{' --data-root DIR' if root else ''}</code>, or by hand{where}:</p>"
                    f"<pre>{_e(chr(10).join(recipe.get('commands', [])))}"
                    "</pre><h2>Configuration</h2><pre>" + _e(json.dumps(
                        {k: recipe.get(k) for k in ("train", "evaluate", "data_sha256", "environment")}, indent=1))
                    + "</pre>")
    else:
        body.append("<h2>Configuration</h2><pre>" + _e(json.dumps(json.loads(rec.defense_config), indent=1))
                    + "</pre><p class=\"note\">No recipe was recorded for this row.</p>")
    return _page(f"{_name(rec)} on {rec.dataset}, {_suite_name(rec)}", "\n".join(body), 1)


def _base(board: str, measured: Sequence[Record]) -> tuple[str, dict[str, float | None]] | None:
    """For a strong suite's board: its published suite and that suite's ARS (corrected) per checkpoint sha256."""
    from attacks.suites import base_of

    base = base_of(board)
    if not base:
        return None
    return base, {r.checkpoint_sha256: r.protocols[P.CORRECTED].ars for r in measured
                  if r.board == base and P.CORRECTED in r.protocols}


def _order(board: str) -> int:
    """Where a board stands among its dataset's: the current strong suites' first, then the published suites',
    then the rest (earlier versions, the largest budgets, the papers')."""
    from attacks.suites import STRONG, get_suite

    if board in {get_suite(s).board for s in STRONG.values()}:
        return 0
    return 1 if board in STRONG else 2


def _queries(pub: Record, strong: Record) -> str:
    """The queries each record attacked: one number where they agree, ``published → strong`` where not."""
    a, b = (f"{r.num_queries:,}" if r.num_queries else "all" for r in (pub, strong))
    return a if a == b else f"{a} → {b}"


def _gap(records: Sequence[Record]) -> str:
    """Per checkpoint measured under a strong suite and its base suite (corrected protocol): both ARS and the gap."""
    from attacks.suites import base_of

    by_key = {(r.checkpoint_sha256, r.board): r for r in records if not r.reported}
    rows = []
    for r in records:
        base = base_of(r.suite_id)  # a published suite: one version, its board the bare id
        pub = by_key.get((r.checkpoint_sha256, base)) if base else None
        if pub is None or r.reported or P.CORRECTED not in r.protocols or P.CORRECTED not in pub.protocols:
            continue
        a, b = pub.protocols[P.CORRECTED].ars, r.protocols[P.CORRECTED].ars
        rows.append((r, pub, a, b, None if a is None or b is None else a - b))
    rows.sort(key=lambda t: (t[0].dataset, -(t[4] or 0.0)))
    th = "".join(f'<th class="{c}">{h}</th>' for h, c in (
        ("Dataset", "t"), ("Defense", "t"), ("By", "t"), ("Suites", "t"), ("Queries", "t"), ("ARS published suite", ""),
        ("ARS strong suite", ""), ("Gap", "")))
    tr = "".join(
        f'<tr><td class="t">{_e(r.dataset)}</td><td class="t name"><a href="models/{_e(r.record_id)}.html">'
        f'{_e(_name(r))}</a>{_tags(r)}</td><td class="t">{_e(_by(r))}</td><td class="t">{_e(_suite_name(pub))} → '
        f'{_e(_suite_name(r))}</td><td class="t">{_e(_queries(pub, r))}</td><td data-v="{a}">{_num(a)}</td>'
        f'<td data-v="{b}">{_num(b)}</td>'
        f'<td data-v="{g}">{_num(g)}</td></tr>' for r, pub, a, b, g in rows)
    text = ("<p>How much of each model's robustness under the published suite (RobRank's sign-PGD, last iterate) "
            "the strong suite takes away: ARS under both, protocol corrected, the same weights. Where the strong "
            "suite attacked fewer queries (its cost), they are the first of the published suite's, so the gap also "
            "holds that subset's sampling noise (Queries: published → strong).</p>")
    table = (f'<table class="sortable" data-protocol="{P.CORRECTED}"><caption>published suite → strong suite, '
             f"protocol {P.CORRECTED}</caption><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>")
    return _page("The strong suite's gap", text + (table if rows else "<p>No model has both yet.</p>"), 0)


def write_site(out: str | Path, records: Iterable[Record],
               histories: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> list[Path]:
    """Write the site for ``records`` (measured and published) into the folder ``out``; return the pages.
    ``histories``: training logs (``history.jsonl`` records) by weights sha256, shown on their models' pages."""
    from attacks.suites import superseded

    out = Path(out)
    records = list(records)
    measured = [r for r in records if not r.reported]
    boards: dict[tuple[str, str, str], list[tuple[Record, str]]] = defaultdict(list)
    for r in measured:
        for protocol in r.protocols:
            boards[(r.dataset, r.board, protocol)].append((r, protocol))
    papers = defaultdict(list)
    for r in records:
        if r.reported:
            papers[r.dataset].append((r, P.ROBRANK))
    for dataset, rows in papers.items():
        robrank = [k for k in boards if k[0] == dataset and k[2] == P.ROBRANK]
        for key in robrank or [(dataset, "papers", P.ROBRANK)]:
            boards[key] += rows
    written = []

    def put(rel: str, text: str) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        written.append(path)

    put("style.css", _CSS + "\n")
    put("sort.js", _SORT + "\n")
    index = []
    for (dataset, suite, protocol), rows in sorted(boards.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]), kv[0])):
        key = board_key(dataset, suite, protocol)
        put(f"boards/{key}.html", _board(dataset, suite, protocol, rows, _base(suite, measured)))
        n_paper = sum(r.reported for r, _ in rows)
        _, named = _board_suite(suite, rows)
        if superseded(suite):
            named += " (earlier version)"
        index.append(f'<tr><td class="t">{_e(dataset)}</td><td class="t">{_e(named)}</td><td class="t">'
                     f'{_e(protocol)}</td><td data-v="{len(rows) - n_paper}">{len(rows) - n_paper}</td>'
                     f'<td data-v="{n_paper}">{n_paper}</td><td class="t"><a href="boards/{_e(key)}.html">'
                     f"{_e(key)}</a></td></tr>")
    siblings = defaultdict(list)
    for r in measured:
        siblings[r.checkpoint_sha256].append(r)
    for r in measured:
        put(f"models/{r.record_id}.html", _model(r, siblings[r.checkpoint_sha256],
                                                  (histories or {}).get(r.checkpoint_sha256, ())))
    put("gap.html", _gap(measured))
    th = "".join(f'<th class="{c}">{h}</th>' for h, c in (("Dataset", "t"), ("Suite", "t"), ("Protocol", "t"),
                                                          ("Measured rows", ""), ("Papers' rows", ""), ("Board", "t")))
    body = ("<p>Adversarial robustness of deep metric learning defenses, measured by ranking attacks and summarised "
            f"as ERS and ARS; every board is {_e(RANKING)}. Each dataset's current strong-suite board, once it has "
            "rows, comes first: it ranks the defenses, as RobustBench ranks by AutoAttack. The headline: "
            "<a href=\"gap.html\">how much the strong suite lowers each model's score</a>.</p>"
            f'<table class="sortable" data-protocol="all"><caption>Boards (dataset x suite x protocol)</caption>'
            f"<thead><tr>{th}</tr></thead><tbody>{''.join(index)}</tbody></table>")
    put("index.html", _page("robustbench-dml leaderboards", body, 0))
    return written
