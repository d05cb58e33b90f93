"""How a leaderboard row was made: the recipe a record carries, so that one command rebuilds the row.

A :class:`Recipe` holds the training configuration and seed (:class:`~robustbench_dml.config.TrainConfig`), the
evaluation configuration (the suite, its overrides, the attacks' seed, the protocols, the numerics), the sha256 of
the data as loaded (each split's pixels and labels, so a gzipped and a plain copy of the same files agree), the sha256
of the trained weights, the budget label (``cpu`` or ``full``, :data:`~robustbench_dml.leaderboard.records.BUDGETS`)
and the versions and CPU kind that made it. :meth:`Recipe.commands` renders the two ``dmlbench`` commands that
train and evaluate it; ``dmlbench reproduce`` runs them and compares (:mod:`robustbench_dml.cli.reproduce`).

Bit-for-bit reproduction needs the same torch version, the same CPU kind (instruction set) and the same thread
count (the recipe's ``threads``); elsewhere the weights differ and the scores are compared with their intervals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from robustbench_dml.errors import UserError

__all__ = ["RECIPE_SCHEMA", "Recipe", "environment", "data_sha256", "train_argv", "evaluate_argv", "eval_settings"]

RECIPE_SCHEMA = 1
#: the evaluation settings a recipe records (the :class:`~robustbench_dml.evaluation.EvalConfig` fields)
_EVAL_FIELDS = ("suite", "attacks", "max_queries", "eps", "seed", "robrank_compat", "numerics", "eot")


def environment() -> dict[str, str]:
    """What decides whether a rebuild can be bit-identical: the torch and Python versions, the CPU kind and MKL's
    reproducibility mode (:func:`robustbench_dml.numerics.reproducible_cpu_blas`: without it MKL's products, and
    so a few attack outcomes, depend on the machine's threads)."""
    import torch

    from robustbench_dml.numerics import cpu_blas_mode

    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": _cpu_model(), "cpu_blas": cpu_blas_mode() or "none"}


def training_seed(recipe: str | None) -> int | None:
    """The seed a row's weights were trained with, read off its recipe (JSON text; None when not recorded). A
    record's own ``seed`` is the evaluation's."""
    try:
        seed = json.loads(recipe).get("train", {}).get("seed") if recipe else None
    except (TypeError, ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def data_sha256(dataset: str, data_root: str | None) -> dict[str, str]:
    """Per split, the sha256 of the data as loaded (the uint8 pixels, then the int64 labels); {} for a dataset
    that is not held in memory (the image-folder datasets: their files are read lazily)."""
    import numpy as np

    from robustbench_dml import datasets
    from robustbench_dml.datasets import TensorDataset

    out = {}
    for split in ("train", "test"):
        ds = datasets.create(dataset, root=data_root, split=split)
        images = ds.images if isinstance(ds, TensorDataset) else None
        if images is None:
            return {}
        h = hashlib.sha256(images.contiguous().numpy().tobytes())
        h.update(np.ascontiguousarray(ds.labels, dtype=np.int64).tobytes())
        out[split] = h.hexdigest()
    return out


def train_argv(train: Mapping[str, Any], out: str) -> list[str]:
    """``dmlbench train`` arguments that give exactly the configuration ``train`` (a ``TrainConfig.to_dict()``)."""
    t = dict(train)
    argv = ["dmlbench", "train", "--defense", t["defense"], "--dataset", t["dataset"]]
    options = (("data_root", "--data-root"), ("backbone", "--backbone"), ("epochs", "--epochs"),
               ("batch_size", "--batch-size"), ("lr", "--lr"), ("weight_decay", "--weight-decay"),
               ("threads", "--threads"), ("train_subset", "--train-subset"))
    for name, flag in options:
        if t.get(name) is not None:
            argv += [flag, str(t[name])]
    if t.get("embedding_dim", 512) != 512:
        argv += ["--embedding-dim", str(t["embedding_dim"])]
    if t.get("pretrained") is False:
        argv.append("--no-pretrained")
    elif isinstance(t.get("pretrained"), str):
        argv += ["--pretrained-weights", t["pretrained"]]
    elif t.get("pretrained") is not None:
        raise UserError("a recipe's pretrained weights must be a file or off (the preset's default is None)")
    if t.get("eval_every") is not None or t.get("num_workers", 0) != 0 or t.get("device", "auto") != "auto":
        raise UserError("a recipe cannot state eval_every, num_workers or a device on the command line; leave "
                        "them at their defaults")
    for key, value in sorted((t.get("defense_params") or {}).items()):
        argv += ["--set", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return argv + ["--seed", str(t["seed"]), "--out", out]


def evaluate_argv(evaluate: Mapping[str, Any], checkpoint: str, json_out: str) -> list[str]:
    """``dmlbench evaluate`` arguments that run the evaluation ``evaluate`` (the recipe's settings)."""
    e = dict(evaluate)
    argv = ["dmlbench", "evaluate", "--checkpoint", checkpoint, "--suite", e["suite"]]
    if e.get("attacks"):
        argv += ["--attacks", ",".join(e["attacks"])]
    for name, flag in (("max_queries", "--max-queries"), ("eps", "--eps"), ("eot", "--eot")):
        if e.get(name) is not None:
            argv += [flag, str(e[name])]
    argv += ["--eval-seed", str(e.get("seed", 0))]
    if e.get("robrank_compat"):
        argv.append("--robrank-compat")
    if e.get("numerics", "exact") == "fast":
        argv.append("--fast")
    return argv + ["--json", json_out]


def eval_settings(eval_cfg) -> dict[str, Any]:
    """The settings of an :class:`~robustbench_dml.evaluation.EvalConfig` a recipe records (JSON values)."""
    from attacks.suites import get_suite, spec_of

    out = {name: getattr(eval_cfg, name) for name in _EVAL_FIELDS}
    suite = get_suite(eval_cfg.suite)
    out["suite"] = spec_of(suite.id, suite.version)  # the version pinned where the suite has several
    out["attacks"] = list(out["attacks"]) if out["attacks"] is not None else None
    out["numerics"] = getattr(eval_cfg.numerics, "name", eval_cfg.numerics)
    return out


@dataclass(frozen=True)
class Recipe:
    """The training and evaluation of one leaderboard row (module docstring); :meth:`to_json` is the record's
    ``recipe`` field."""

    train: Mapping[str, Any]
    evaluate: Mapping[str, Any]
    weights_sha256: str
    data_sha256: Mapping[str, str]
    environment: Mapping[str, str]
    budget: str | None = None
    schema: int = RECIPE_SCHEMA

    def __post_init__(self) -> None:
        from robustbench_dml.leaderboard.records import BUDGETS, HEX64

        if self.schema != RECIPE_SCHEMA:
            raise UserError(f"recipe schema {self.schema!r} is not {RECIPE_SCHEMA}; it was written by another "
                            "robustbench_dml version")
        if not isinstance(self.weights_sha256, str) or not HEX64.match(self.weights_sha256):
            raise UserError("a recipe needs the 64-hex sha256 of its weights")
        if self.budget is not None and self.budget not in BUDGETS:
            raise UserError(f"budget {self.budget!r} is not one of {', '.join(BUDGETS)}")
        unknown = sorted(set(self.evaluate) - set(_EVAL_FIELDS))
        if unknown:
            raise UserError(f"a recipe's evaluation has unknown settings {', '.join(unknown)}")
        self.train_config()  # validated as the command line would be
        self.eval_config()

    def train_config(self, data_root: str | None = None):
        """The :class:`~robustbench_dml.config.TrainConfig` (``data_root`` replaced when given)."""
        from robustbench_dml.config import TrainConfig

        cfg = TrainConfig.from_dict(dict(self.train))
        return dataclasses.replace(cfg, data_root=data_root) if data_root else cfg

    def eval_config(self):
        from robustbench_dml.evaluation import EvalConfig

        e = dict(self.evaluate)
        if e.get("attacks") is not None:
            e["attacks"] = tuple(e["attacks"])
        return EvalConfig(**e)

    def commands(self, out: str = "RUN") -> list[str]:
        """The shell commands that train and evaluate this row, the run folder named ``out``."""
        return [shlex.join(train_argv(self.train, out)),
                shlex.join(evaluate_argv(self.evaluate, f"{out}/checkpoint", f"{out}/eval.json"))]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["commands"] = self.commands()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str, *, where: str = "recipe") -> Recipe:
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise UserError(f"{where} is not valid JSON") from None
        if not isinstance(data, dict):
            raise UserError(f"{where} is not a JSON object")
        data.pop("commands", None)  # rendered from the rest
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) - names or {"train", "evaluate", "weights_sha256"} - set(data):
            raise UserError(f"{where} has fields {', '.join(sorted(set(data) ^ names))} missing or unknown")
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"{where}: {exc}") from None

    @classmethod
    def of(cls, train_cfg, eval_cfg, weights_sha256: str, budget: str | None = None,
           env: Mapping[str, str] | None = None) -> Recipe:
        """The recipe of a run that trained ``train_cfg`` and evaluated with ``eval_cfg`` (an ``EvalConfig``) on the
        machine ``env`` describes (:func:`environment`; None: this one)."""
        train = {**train_cfg.to_dict(), "device": "auto", "num_workers": 0}  # neither changes the weights
        return cls(train=train, evaluate=eval_settings(eval_cfg), weights_sha256=weights_sha256,
                   data_sha256=data_sha256(train_cfg.dataset, train_cfg.data_root),
                   environment=dict(env) if env is not None else environment(),
                   budget=budget)
