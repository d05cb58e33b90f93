"""The official boards: rows the project measured, shipped inside the package, re-derived at every load.

An official row is not a stored score. The package holds, per model, one entry file
(``robustbench_dml/boards/<dataset>/<model>.json.gz``): the model's training recipe and every evaluation result
made of it (the complete ``dmlbench evaluate --json`` output, per-query results and success flags included), and
the training's per-epoch log (its ``history.jsonl`` records: losses, the adversary's gains, benign R@1, the
collapse diagnostic) where the entry was built with it. Each load derives the records from those results as
``dmlbench submit`` would (:func:`record_from_result`: every score, interval and worst case re-derived, an edited
value refused), so what a board shows is always what its evidence gives. Each record carries its
:class:`~robustbench_dml.leaderboard.recipes.Recipe` (``dmlbench reproduce`` rebuilds the row) and its budget
label (``cpu``: the project's CPU studies' subset and epochs; ``full``: the published schedule), and its ``source``
says it is official (:data:`OFFICIAL_SOURCE`).

Official rows are read, never written into a user's store: ``dmlbench leaderboard show`` places them beside the
local store's rows, marked ``(official)``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustbench_dml.errors import UserError
from robustbench_dml.files import atomic_write_bytes
from robustbench_dml.leaderboard.recipes import Recipe

if TYPE_CHECKING:
    import pandas as pd

    from robustbench_dml.leaderboard.records import Record

__all__ = ["OFFICIAL_SUBMITTER", "OFFICIAL_SOURCE", "ENTRY_SCHEMA", "BOARDS", "official_records", "official_frame",
           "entry_file", "entry_records", "entry_history", "official_histories", "write_entry", "is_official"]

OFFICIAL_SUBMITTER = "robustbench-dml"
OFFICIAL_SOURCE = "robustbench-dml official board"
ENTRY_SCHEMA = 1
#: where the package's official boards live
BOARDS = Path(__file__).resolve().parents[1] / "boards"
#: an entry file larger than this is refused before it is read (a whole 10,000-query evaluation is ~10 MB)
MAX_ENTRY_BYTES = 64 * 2**20


def write_entry(path: str | Path, *, model: str, recipe_train: Any, weights_sha256: str, budget: str | None,
                evaluations: Sequence[Mapping[str, Any]], created: str,
                history: Sequence[Mapping[str, Any]] = (),
                environments: Sequence[Mapping[str, str] | None] = ()) -> Path:
    """Write one model's entry: ``recipe_train`` (its ``TrainConfig``), its evaluation results
    (``EvaluationResult.to_dict()``), each recorded with the evaluation settings it holds and the machine it was made
    on (``environments[i]`` for result ``i``, as :func:`~robustbench_dml.leaderboard.recipes.environment` returned it
    there; missing or None: this machine), and the training's ``history`` (its ``history.jsonl`` records; none: the
    entry has no log). Every result must be of the weights ``weights_sha256``."""
    from robustbench_dml.evaluation import EvalConfig

    entry = {"schema": ENTRY_SCHEMA, "model": model, "created": created, "evaluations": []}
    for i, result in enumerate(evaluations):
        env = environments[i] if i < len(environments) else None
        recipe = Recipe.of(recipe_train, EvalConfig.from_result(result), weights_sha256, budget, env)
        entry["evaluations"].append({"recipe": json.loads(recipe.to_json()), "result": result})
    if history:
        entry["history"] = [dict(h) for h in history]
    _records_of(entry, where=str(path))  # what cannot be loaded is not written
    _history_of(entry, where=str(path))
    data = json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    path = Path(path)
    atomic_write_bytes(path, gzip.compress(data, mtime=0))
    return path


def _read_entry(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_ENTRY_BYTES:
        raise UserError(f"official board entry {path} is larger than {MAX_ENTRY_BYTES >> 20} MiB; the package is "
                        "damaged, reinstall it")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(8 * MAX_ENTRY_BYTES + 1)
        if len(data) > 8 * MAX_ENTRY_BYTES:
            raise ValueError("too large when unpacked")
        entry = json.loads(data)
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"official board entry {path} is damaged ({str(exc).splitlines()[0]}); reinstall the "
                        "package") from None
    if not isinstance(entry, dict) or entry.get("schema") != ENTRY_SCHEMA:
        raise UserError(f"official board entry {path} is not of schema {ENTRY_SCHEMA}; reinstall the package")
    return entry


def _records_of(entry: Mapping[str, Any], *, where: str, board: str | None = None) -> list[Record]:
    from attacks.suites import get_suite
    from robustbench_dml.leaderboard.derive import record_from_result

    out = []
    evaluations = entry.get("evaluations")
    if not isinstance(evaluations, list) or not isinstance(entry.get("created"), str):
        raise UserError(f"official board entry {where} lacks its evaluations or date; reinstall the package")
    for i, item in enumerate(evaluations):
        here = f"{where}, evaluation {i}"
        if not isinstance(item, Mapping):
            raise UserError(f"{here}: not a JSON object; reinstall the package")
        recipe = Recipe.from_json(json.dumps(item.get("recipe")), where=f"{here}, recipe")
        suite = get_suite(recipe.evaluate["suite"])
        if board is not None and suite.board != board:
            continue  # only the board asked for is derived
        record = record_from_result(item.get("result"), submitter=OFFICIAL_SUBMITTER, created=entry["created"])
        if record.checkpoint_sha256 != recipe.weights_sha256:
            raise UserError(f"{here}: the result is of weights {record.checkpoint_sha256[:12]}..., the recipe's are "
                            f"{recipe.weights_sha256[:12]}...; reinstall the package")
        if (record.suite_id, record.suite_version) != (suite.id, suite.version):
            raise UserError(f"{here}: the result is of suite {record.suite_id} version {record.suite_version}, the "
                            f"recipe's is {suite.name}; reinstall the package")
        out.append(dataclasses.replace(record, source=OFFICIAL_SOURCE, budget=recipe.budget,
                                       recipe=recipe.to_json(), note=f"official: {entry.get('model')}"))
    return out


def entry_file(dataset: str, model: str, seed: int, *, root: str | Path | None = None) -> Path:
    """Where the entry of ``model`` (a row name such as ``ca_tride[released]``) at ``seed`` lives (or would)."""
    name = f"{model}-seed{seed}".replace("[", "-").replace("]", "")
    return (Path(root) if root is not None else BOARDS) / dataset / f"{name}.json.gz"


def entry_records(path: str | Path, board: str | None = None) -> list[Record]:
    """The records of one entry file (of the leaderboard ``board`` only, when given), each re-derived."""
    return _records_of(_read_entry(Path(path)), where=str(path), board=board)


def _history_of(entry: Mapping[str, Any], *, where: str) -> list[dict[str, Any]]:
    history = entry.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) and isinstance(h.get("epoch"), int)
                                                for h in history):
        raise UserError(f"official board entry {where} has a damaged training log; reinstall the package")
    return history


def entry_history(path: str | Path) -> list[dict[str, Any]]:
    """The training's per-epoch records an entry holds (its ``history.jsonl``, in order; [] for an entry built
    without them)."""
    return _history_of(_read_entry(Path(path)), where=str(path))


def _entry_paths(dataset: str | None, root: str | Path | None) -> list[Path]:
    """The entry files of ``dataset`` (every dataset's when None) under ``root`` (default: the package's boards)."""
    base = Path(root) if root is not None else BOARDS
    if dataset is not None:
        folders: Iterable[Path] = [base / dataset]
    else:
        folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    return [path for folder in folders for path in (sorted(folder.glob("*.json.gz")) if folder.is_dir() else [])]


def official_records(dataset: str | None = None, board: str | None = None, *,
                     root: str | Path | None = None) -> list[Record]:
    """The official records (of ``dataset`` and of the leaderboard ``board``, a suite version's, when given), each
    re-derived from its result; ``root`` replaces the package's boards (tests, a board being built)."""
    return [rec for path in _entry_paths(dataset, root) for rec in entry_records(path, board)]


def official_histories(dataset: str | None = None, *, root: str | Path | None = None) -> dict[str, list[dict]]:
    """The training logs the official entries hold (of ``dataset`` when given), by weights sha256."""
    out = {}
    for path in _entry_paths(dataset, root):
        entry = _read_entry(path)
        history = _history_of(entry, where=str(path))
        if history and entry["evaluations"]:
            out[entry["evaluations"][0]["recipe"]["weights_sha256"]] = history
    return out


def official_frame(dataset: str, board: str, *, root: str | Path | None = None) -> pd.DataFrame:
    """The official rows of one board as a leaderboard frame (one row per record and protocol)."""
    from robustbench_dml.leaderboard.frames import records_to_frame

    return records_to_frame(official_records(dataset, board, root=root))


def is_official(source: Any, reported: Any) -> bool:
    """Whether a frame row is an official one (its ``source`` and ``reported`` columns)."""
    return isinstance(source, str) and source == OFFICIAL_SOURCE and not bool(reported)
