"""Result records, versioned leaderboards, the published reference rows, tables and plots.

Typical use (what ``dmlbench run`` / ``submit`` / ``leaderboard`` / ``compare`` / ``plot`` do)::

    from robustbench_dml.leaderboard import LeaderboardStore, record_from_result, reference_frame, render, frames_concat

    record = record_from_result(json.load(open("eval.json")), submitter="alice")
    store = LeaderboardStore("leaderboards")
    version, added = store.add_record(record)               # new immutable version unless already present
    board = store.load(record.dataset, record.suite_id)     # validated against its manifest; one row per protocol
    ours = board[board["protocol"] == "robrank"]             # the papers' protocol: their rows may sit beside it
    both = frames_concat([ours, reference_frame(record.dataset)])
    print(render(both, "md", highlight_record_id=record.record_id))

Names are imported lazily (PEP 562): writing a record needs only pyarrow, so concurrent ``submit`` processes start
fast; pandas is imported when a frame is built and matplotlib when a plot is drawn. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "records": ("RECORD_SCHEMA_VERSION", "Record", "read_record"),
    "derive": ("record_from_result",),
    "frames": ("ARROW_SCHEMA", "COLUMNS", "DTYPES", "coerce_frame", "empty_frame", "records_to_frame", "sort_frame"),
    "reference": ("REFERENCE_SUITE", "reference_frame", "reference_records"),
    "store": ("LeaderboardStore", "build_reference_store", "frames_concat"),
    "tables": ("TABLE_COLUMNS", "protocol_of", "render", "write"),
    "plots": ("plot_eps_curve", "plot_resistance"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
