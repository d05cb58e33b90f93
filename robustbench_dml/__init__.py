"""robustbench-dml: the benchmark for adversarial-training defenses of deep metric learning.

The distribution installs three import packages side by side: ``robustbench_dml`` (the core), ``attacks`` (the
attack zoo) and ``defenses`` (the adversarial-training defenses); ``docs/api.md`` says why the two generic names
are kept. Importing ``robustbench_dml`` checks that ``attacks`` and ``defenses`` resolve to the packages installed
beside it, so a same-named package of another distribution earlier on ``sys.path`` is a one-line error here rather
than a confusing failure later.
"""

from __future__ import annotations

import importlib.util as _util
from pathlib import Path as _Path

__version__ = "0.1.0"


def _check_sibling_packages() -> None:
    home = _Path(__file__).resolve().parent.parent
    for name in ("attacks", "defenses"):
        spec = _util.find_spec(name)
        found = _Path(spec.origin).resolve().parent if spec is not None and spec.origin else None
        if found is None or found.parent != home:
            raise ImportError(f"the import name {name!r} resolves to {found or 'nothing'}, not to robustbench-dml's "
                              f"package in {home}; another distribution or folder named {name!r} comes first on "
                              "sys.path: install robustbench-dml in its own virtual environment or run from another "
                              "folder")


_check_sibling_packages()


def __getattr__(name: str):
    """``robustbench_dml.benchmark`` (:func:`robustbench_dml.benchmarking.benchmark`), imported on first use so that
    ``import robustbench_dml`` stays light."""
    if name == "benchmark":
        from robustbench_dml.benchmarking import benchmark

        return benchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
