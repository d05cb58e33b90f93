"""The static leaderboard site, read as a browser would need it: every row present, every link resolving, the
protocol of every table named, the gap computed from the two suites' records."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_leaderboard import make_eval

from robustbench_dml import protocols as P
from robustbench_dml.cli.main import main
from robustbench_dml.leaderboard import Record, record_from_result, reference_records
from robustbench_dml.leaderboard.site import board_key, write_site


class Page(HTMLParser):
    """Links, tables (their protocol and caption), rows (record id and class) and SVG rectangles of one page."""

    def __init__(self, path: Path):
        super().__init__()
        self.links: list[str] = []
        self.tables: list[dict] = []
        self.rows: list[dict] = []
        self.rects = 0
        self.svgs = 0
        self._in_caption = False
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))
        elif tag == "table":
            self.tables.append({"protocol": a.get("data-protocol"), "caption": ""})
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tr" and "data-record" in a:
            self.rows.append({"record": a["data-record"], "class": a.get("class")})
        elif tag == "rect":
            self.rects += 1
        elif tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.tables[-1]["caption"] += data


def _records() -> list[Record]:
    out = []
    for i in range(3):
        ev = make_eval(i, protocols=("corrected", "robrank"))
        out.append(record_from_result(ev, submitter=f"user{i}", created="2026-01-01"))
        strong = copy.deepcopy(make_eval(i + 10, protocols=("corrected",)))
        strong["checkpoint"] = ev["checkpoint"]  # the same weights under the strong suite
        strong["suite"] = {**ev["suite"], "id": "rankaa28", "hash": hashlib.sha256(b"rankaa28").hexdigest()}
        out.append(record_from_result(strong, submitter=f"user{i}", created="2026-01-01"))
    return out


def test_the_site_links_every_row_and_names_every_tables_protocol(tmp_path):
    records = _records() + reference_records()
    log = [{"epoch": 1, "loss": 0.2, "R@1": 90.0, "inter_class_distance": 1.1}]
    pages = write_site(tmp_path, records, {records[0].checkpoint_sha256: log})
    assert (tmp_path / "index.html") in pages and (tmp_path / "gap.html") in pages
    parsed = {p: Page(p) for p in pages if p.suffix == ".html"}
    for path, page in parsed.items():
        for link in page.links:  # every link resolves to a written file
            assert (path.parent / link.split("#")[0]).resolve().is_file(), (path.name, link)
        for table in page.tables:  # every table names its protocol, or says it has none
            assert table["protocol"] in (*P.PROTOCOLS, "all", "none")
            if table["protocol"] == "none":
                assert "no protocol" in table["caption"]
            elif table["protocol"] != "all":
                assert f"protocol {table['protocol']}" in table["caption"]
    measured = [r for r in records if not r.reported]
    for r in measured:  # every measured row on its board under each protocol, once, and a card per record
        for protocol in r.protocols:
            board = parsed[tmp_path / "boards" / f"{board_key(r.dataset, r.suite_id, protocol)}.html"]
            assert [row["record"] for row in board.rows].count(r.record_id) == 1
        card = parsed[tmp_path / "models" / f"{r.record_id}.html"]
        assert card.svgs == len(r.protocols)
        assert r.checkpoint_sha256 in (tmp_path / "models" / f"{r.record_id}.html").read_text()
    # the papers' rows sit on the robrank board only, marked
    fashion_papers = [r.record_id for r in records if r.reported and r.dataset == "fashion"]
    papers_board = parsed[tmp_path / "boards" / f"{board_key('fashion', 'papers', P.ROBRANK)}.html"]
    assert sorted(row["record"] for row in papers_board.rows) == sorted(fashion_papers)
    assert {row["class"] for row in papers_board.rows} == {"paper"}
    digits_robrank = parsed[tmp_path / "boards" / f"{board_key('digits', 'rob28', P.ROBRANK)}.html"]
    assert {row["class"] for row in digits_robrank.rows} == {"local"}  # no paper printed digits rows
    assert not any(row["class"] == "paper" for row in
                   parsed[tmp_path / "boards" / f"{board_key('digits', 'rob28', P.CORRECTED)}.html"].rows)


def test_rows_of_two_training_seeds_are_told_apart_by_their_recipes_seed(tmp_path):
    # two seeds of one defense were two identical-looking rows, and the card's "seed" was the evaluation's
    import json

    a, b = (dataclasses.replace(r, recipe=json.dumps({"train": {"seed": s}, "evaluate": {"seed": 0}}))
            for r, s in zip([r for r in _records() if r.suite_id == "rob28"][:2], (0, 1)))
    write_site(tmp_path, [a, b])
    board = (tmp_path / "boards" / f"{board_key('digits', 'rob28', P.CORRECTED)}.html").read_text()
    assert "<th class=\"\">Seed</th>" in board
    for seed in (0, 1):  # the cell after the budget's, and a tag beside the name (on screen without scrolling)
        assert f'<td class="t">–</td><td data-v="{seed}">{seed}</td>' in board
        assert board.count(f'<span class="tag seed">seed {seed}</span>') == 1
    card = (tmp_path / "models" / f"{b.record_id}.html").read_text()
    assert "<dt>training seed</dt><dd>1</dd>" in card and "<dt>evaluation seed</dt><dd>0</dd>" in card
    assert "--data-root" not in card  # a dataset without a folder (digits ships with scikit-learn)


def test_a_recipe_built_from_a_data_folder_tells_the_reader_to_give_theirs(tmp_path):
    import json

    rec = dataclasses.replace(_records()[0], recipe=json.dumps(
        {"train": {"seed": 0, "data_root": "/builder/fashion-mnist"}, "evaluate": {"seed": 0},
         "commands": ["dmlbench train --dataset fashion --data-root /builder/fashion-mnist --seed 0 --out RUN"]}))
    write_site(tmp_path, [rec])
    card = (tmp_path / "models" / f"{rec.record_id}.html").read_text()
    assert f"dmlbench reproduce {rec.record_id} --data-root DIR</code>" in card
    assert "names the folder the row was built from; give yours" in card and "/builder/fashion-mnist" in card


def test_the_gap_page_subtracts_the_strong_suites_ars(tmp_path):
    records = _records()
    write_site(tmp_path, records)
    text = (tmp_path / "gap.html").read_text()
    by = {(r.checkpoint_sha256, r.suite_id): r for r in records}
    for (sha, suite), r in by.items():
        if suite == "rankaa28":
            gap = by[(sha, "rob28")].protocols["corrected"].ars - r.protocols["corrected"].ars
            assert f">{gap:.1f}</td>" in text and f'href="models/{r.record_id}.html"' in text
    # a strong suite that attacked the first 128 of the published suite's queries says so
    pub, strong = next((by[(sha, "rob28")], r) for (sha, suite), r in by.items() if suite == "rankaa28")
    write_site(tmp_path / "subset", [dataclasses.replace(pub, num_queries=1000),
                                     dataclasses.replace(strong, num_queries=128)])
    assert '<td class="t">1,000 → 128</td>' in (tmp_path / "subset" / "gap.html").read_text()
    assert '<td class="t">1,000 → 128</td>' not in text


def test_a_strong_board_shows_each_rows_published_suite_ars_beside_its_own(tmp_path):
    records = _records()
    write_site(tmp_path, records)
    by = {(r.checkpoint_sha256, r.suite_id): r for r in records}
    board = (tmp_path / "boards" / f"{board_key('digits', 'rankaa28', P.CORRECTED)}.html").read_text()
    assert "<th class=\"\">ARS rob28</th>" in board
    for (sha, suite), r in by.items():
        if suite == "rankaa28":
            row = board[board.index(f'data-record="{r.record_id}"'):]
            assert f'data-v="{by[(sha, "rob28")].protocols["corrected"].ars}"' in row[:row.index("</tr>")]
    published = (tmp_path / "boards" / f"{board_key('digits', 'rob28', P.CORRECTED)}.html").read_text()
    assert "ARS rob28" not in published


def test_a_board_and_a_card_give_the_worst_case_per_threat(tmp_path):
    # the share of queries any attack broke is near 100 for every model; per threat the models differ
    pub = next(r for r in _records() if r.suite_id == "rob28")
    scores = dataclasses.replace(pub.protocols["corrected"], wc_candidate=37.5, wc_query=12.25, wc_recall=None)
    write_site(tmp_path, [dataclasses.replace(pub, protocols={**pub.protocols, "corrected": scores})])
    board = (tmp_path / "boards" / f"{board_key('digits', 'rob28', P.CORRECTED)}.html").read_text()
    assert '<th class="">WC candidate %</th>' in board and "Worst case" not in board
    assert '<td data-v="37.5">37.5</td><td data-v="12.25">12.2</td><td data-v="">–</td>' in board
    card = (tmp_path / "models" / f"{pub.record_id}.html").read_text()
    assert "Queries broken per threat (%): candidate 37.5, query 12.2, recall –;" in card


def test_the_index_puts_each_datasets_current_strong_suite_board_first(tmp_path):
    # the boards rank by the strong suite: its current version's board leads the dataset's rows, then the published
    # suite's, then the rest (here version 1's board, which sorted first by name)
    from attacks.suites import get_suite

    records = _records()
    v3 = get_suite("rankaa28")
    current = [dataclasses.replace(r, suite_version=v3.version) for r in records if r.suite_id == "rankaa28"]
    write_site(tmp_path, records + current)
    index = (tmp_path / "index.html").read_text()
    order = [index.index(f'href="boards/{board_key("digits", b, P.CORRECTED)}.html"')
             for b in (v3.board, "rob28", "rankaa28")]
    assert order == sorted(order) and v3.board == "rankaa28.v3"
    # and the earlier version's row says so (one row: it has one protocol), the current one's does not
    assert index.count(" (earlier version)</td>") == 1
    row = index[index.rindex("<tr>", 0, order[2]):order[2]]
    assert "(earlier version)" in row and "v1" in row


def test_leaderboard_site_command_writes_an_empty_store_and_refuses_a_used_folder(tmp_path, capsys):
    # the papers' rows alone (an empty store): a board per dataset they cover
    assert main(["leaderboard", "site", "--output", str(tmp_path / "site"),
                 "--leaderboard-dir", str(tmp_path / "none")]) == 0
    assert (tmp_path / "site" / "boards" / "cub-papers-robrank.html").is_file()
    assert main(["leaderboard", "site", "--output", str(tmp_path / "site"),
                 "--leaderboard-dir", str(tmp_path / "none")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["leaderboard", "site", "--leaderboard-dir", str(tmp_path / "none")]) == 2
    assert main(["leaderboard", "show", "--leaderboard-dir", str(tmp_path / "none")]) == 2
    assert "needs --dataset" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0.0, 37.5])
def test_a_zero_resistance_bar_stays_visible(value, tmp_path):
    from robustbench_dml.leaderboard.site import _svg_bars

    svg = _svg_bars({"GTT": value, "LTM": None})
    assert svg.count("<rect") == 1 and "not measured" in svg and f">{value:.1f}<" in svg
    width = float(svg.split('width="')[2].split('"')[0])
    assert width == pytest.approx(max(value * 3.2, 1.5))


def _run_folder(root: Path, i: int, files: dict[str, str]) -> Path:
    """A run folder whose eval/ holds synthetic results of one model under ``files`` (file name -> suite id)."""
    import json

    run = root / f"run{i}"
    (run / "eval").mkdir(parents=True)
    for name, suite in files.items():
        ev = make_eval(i if suite == "rob28" else i + 10)
        ev["checkpoint"] = make_eval(i)["checkpoint"]
        sid, _, version = suite.partition(".v")
        ev["suite"] = {**ev["suite"], "id": sid, "version": int(version or 1),
                       "hash": hashlib.sha256(suite.encode()).hexdigest()}
        (run / "eval" / name).write_text(json.dumps(ev))
    return run


def test_compare_puts_two_suites_side_by_side_and_finds_partial_evaluations(tmp_path, capsys):
    # the current rankaa28 (version 3) is found under its board's name, earlier versions' files beside it are not read
    runs = [_run_folder(tmp_path, i, {"rob28.json": "rob28", "rankaa28.v3-q64.json": "rankaa28.v3",
                                      "rankaa28.v2-q64.json": "rankaa28.v2", "rankaa28.json": "rankaa28.v1"})
            for i in range(2)]
    assert main(["compare", *map(str, runs), "--suite", "rob28,rankaa28", "--name", "ann"]) == 0
    out = capsys.readouterr().out
    title, blank, header, _, *rows = out.strip().splitlines()
    assert title.startswith("digits; rob28 vs rankaa28; Protocol: corrected; ARS difference = rob28 - rankaa28")
    assert header.split("|")[1:-1] == [" Defense ", " By ", " Run ", " ERS rob28 ", " ERS rankaa28 ",
                                       " ARS rob28 ", " ARS rankaa28 ", " ARS difference "]
    for i, run in enumerate(runs):
        a = record_from_result(make_eval(i), submitter="x").ars
        b = record_from_result(make_eval(i + 10), submitter="x").ars
        (row,) = [r for r in rows if f"| {run} |" in r]
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[:2] == ["CA-TRIDE", "ann"] and cells[-1] == f"{a - b:.1f}" and cells[5] == f"{a:.1f}"
    # rankaa28 alone: the one partial file is found; two partial files are named, not guessed between
    assert main(["compare", str(runs[0]), "--suite", "rankaa28"]) == 0
    assert "rankaa28 v3 (eps 77/255)" in capsys.readouterr().out
    two = _run_folder(tmp_path, 5, {"rankaa28.v3-q64.json": "rankaa28.v3", "rankaa28.v3-q32.json": "rankaa28.v3"})
    assert main(["compare", str(two), "--suite", "rankaa28"]) == 2
    assert "rankaa28.v3-q32.json, rankaa28.v3-q64.json" in capsys.readouterr().err


def test_the_attack_table_fits_80_columns_and_ranks_worst_cases_by_threat():
    import io

    from rich.console import Console

    from robustbench_dml.cli.report import attack_table
    from robustbench_dml.results import EvaluationResult

    ev = make_eval(1)
    block = ev["protocols"]["corrected"]
    block["clean"] = {k: v + 1 for k, v in block["raw"].items()}
    block["scores"].update(worst_case=100.0, worst_case_by_threat={"candidate": 95.3, "query": 98.4,
                                                                   "recall": 100.0})
    buf = io.StringIO()
    Console(file=buf, width=80, highlight=False).print(attack_table(EvaluationResult.from_dict(ev)))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    labels = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert labels[-4:] == ["WC candidate %", "WC query %", "WC recall %", "WC any attack %"]  # none folded


def _attack_rows(ev: dict) -> dict[str, list[str]]:
    """The cells of evaluate's attack table for the result ``ev``, by row label."""
    import io

    from rich.console import Console

    from robustbench_dml.cli.report import attack_table
    from robustbench_dml.results import EvaluationResult

    buf = io.StringIO()
    Console(file=buf, width=80, highlight=False).print(attack_table(EvaluationResult.from_dict(ev)))
    return {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in buf.getvalue().splitlines() if line.startswith("│")}


def test_the_attack_table_gives_each_attacks_terms_for_a_subset_of_the_suite():
    # `--attacks TMA,GTT` has no ERS, but each attack's resistance term is defined on its own (ARS's recall terms
    # with the benign R@1); TMA has an ERS term only
    from robustbench_dml import scoring

    ev = make_eval(1)
    block = ev["protocols"]["corrected"]
    raw = block["raw"] = {k: v for k, v in block["raw"].items() if k in ("TMA", "GTT", "R@1")}
    rows = _attack_rows(ev)
    assert rows["TMA"][-2:] == [f"{scoring.term(raw, 'TMA', 'ERS'):.1f}", "-"]  # TMA is no ARS term
    assert rows["GTT"][-2:] == [f"{scoring.term(raw, 'GTT', 'ERS'):.1f}", f"{scoring.term(raw, 'GTT', 'ARS'):.1f}"]
    # a model whose clean top-1 is always wrong has no recall term (they divide by R@1): '-', not a crash
    block["raw"] = {"ES:D": 1.3, "ES:R": 50.0, "GTT": 0.0, "R@1": 0.0}
    rows = _attack_rows(ev)
    assert rows["ES:R"][-1] == "-" and rows["GTT"][-1] == "0.0"


def test_a_strong_result_reports_what_the_published_attacks_and_the_search_each_leave():
    # version 3 joins a search to the gradient runs: evaluate prints the published attacks alone (pgd), the gradient
    # runs alone (the step before the search) and the reported scores, each computed from the recorded parts
    from attacks.suites import get_suite
    from robustbench_dml import scoring
    from robustbench_dml.cli.report import protocol_lines
    from robustbench_dml.results import EvaluationResult

    v3 = get_suite("rankaa28")
    ev = make_eval(1)
    raw = ev["protocols"]["corrected"]["raw"]
    ev["suite"] = {**ev["suite"], "id": v3.id, "version": v3.version, "hash": v3.hash, "params": v3.params}
    scale = {"pgd": 1.3, "g232": 1.1, "g232+s5000": 1.0, "final": 1.0}  # each part's CA+, as a multiple of the final
    parts = {k: {"pgd": v, "g232": v, "g232+s5000": v, "final": v} for k, v in raw.items() if k != "R@1"}
    parts["CA+"] = {part: raw["CA+"] * m for part, m in scale.items()}
    ev["extra"] = {"engine": {"parts": {"CA+": {"CA+": parts.pop("CA+")}, "rest": parts}, "masking_suspected": []}}
    lines = {line.split(":")[0].strip(): line for line in protocol_lines(EvaluationResult.from_dict(ev))}
    for name, step in (("pgd", "pgd"), ("g232", "g232")):
        expected = scoring.ars({**raw, "CA+": raw["CA+"] * scale[step]})
        assert f"ARS {expected:.1f}" in lines[name], lines[name]
    assert "what the random search adds" in lines["g232"]
    assert f"ARS {scoring.ars(raw):.1f}" in lines["corrected"]


def test_a_model_page_shows_its_training_log_one_row_per_epoch(tmp_path):
    rec = _records()[0]
    log = [{"epoch": 1, "loss": 0.25, "R@1": 90.0, "inter_class_distance": 1.1, "adv_gain": 0.04, "seconds": 20.0},
           {"epoch": 2, "loss": 0.125, "R@1": 91.0, "inter_class_distance": 0.5, "adv_gain": 0.03, "seconds": 21.0},
           {"epoch": 2, "loss": 0.1, "R@1": 92.5, "inter_class_distance": 0.25, "adv_gain": 0.02, "seconds": 19.0}]
    write_site(tmp_path, [rec], {rec.checkpoint_sha256: log})
    page = (tmp_path / "models" / f"{rec.record_id}.html").read_text()
    table = page[page.index("<caption>Training log"):]
    table = table[:table.index("</table>")]
    # the columns the log has, in the page's order; a redone epoch (a resumed run logs it again) shows its last record
    assert "<th>epoch</th><th>loss</th><th>R@1</th><th>inter-class</th><th>adv_gain</th><th>seconds</th>" in table
    assert "intra-class" not in table and "lambda" not in table
    assert table.count("<tr><td>") == 2
    assert "<tr><td>2</td><td>0.1000</td><td>92.50</td><td>0.250</td><td>0.020</td><td>19</td></tr>" in table
    assert "Training log" not in (write_site(tmp_path / "bare", [rec]) and
                                  (tmp_path / "bare" / "models" / f"{rec.record_id}.html").read_text())


def test_a_model_card_gives_both_class_distances_of_the_collapse_diagnostic(tmp_path):
    ev = make_eval(0, protocols=("corrected",))
    ev["benign"].update(intra_class_distance=0.125, inter_class_distance=0.5, entanglement=0.25)
    rec = record_from_result(ev, submitter="user0", created="2026-01-01")
    write_site(tmp_path, [rec])
    page = (tmp_path / "models" / f"{rec.record_id}.html").read_text()
    assert "<dt>intra- / inter-class distance</dt><dd>0.125 / 0.500</dd>" in page
    assert "<dt>entanglement</dt><dd>0.250</dd>" in page
