"""Checkpoints: a directory holding ``model.safetensors`` and ``meta.json``, nothing else is read.

Loading rebuilds the model from the backbone registry and reads only those two files: no pickle is ever
opened, and the weights' sha256 (recorded in ``meta.json``) is checked first. A model trained elsewhere
comes in through :func:`convert_state_dict`, which uses ``torch.load(weights_only=True)`` and nothing less safe.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_dml import backbones
from robustbench_dml.errors import UserError
from robustbench_dml.runtime import versions

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
META = "meta.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
MAX_EMBEDDING_DIM = 65536
REQUIRED_META = ("schema_version", "dataset", "backbone", "backbone_kwargs", "embedding_dim", "defense",
                 "weights_sha256")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP / torch.compile prefixes; make every tensor contiguous CPU memory."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v.detach().cpu().contiguous()
    return out


def check_target(directory: str | os.PathLike, replace: bool = False) -> Path:
    """Refuse to write a checkpoint over anything but an empty folder or, with ``replace``, a checkpoint folder
    (exactly ``model.safetensors`` and ``meta.json``): a folder holding anything else is never touched."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a folder; choose another output folder")
    if directory.is_dir():
        contents = sorted(p.name for p in directory.iterdir())
        foreign = [n for n in contents if n not in (WEIGHTS, META)]
        if foreign:
            raise UserError(f"{directory} already holds {foreign[0]}, which is not ours; choose another output "
                            "folder (nothing was written)")
        if contents and not replace:
            raise UserError(f"{directory} already holds a checkpoint; pass --overwrite to replace it or choose "
                            "another output folder")
    return directory


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, meta: dict[str, Any], *,
                    replace: bool = False) -> Path:
    """Write ``model``'s weights and ``meta`` (plus provenance) atomically to ``directory``; return its path.
    ``directory`` must be absent, empty or (with ``replace``) a checkpoint folder: see :func:`check_target`."""
    from safetensors.torch import save_file

    directory = check_target(directory, replace)
    directory.parent.mkdir(parents=True, exist_ok=True)
    spec = dict(getattr(model, "spec", {}) or {})
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(_clean_state_dict(model.state_dict()), str(tmp / WEIGHTS))
        full = {
            "schema_version": SCHEMA_VERSION,
            "backbone": spec.get("backbone"),
            "backbone_kwargs": {k: v for k, v in spec.items() if k != "backbone"},
            "embedding_dim": getattr(model, "embedding_dim", None),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            **meta,
            "weights_sha256": file_sha256(tmp / WEIGHTS),
        }
        missing = [k for k in REQUIRED_META if full.get(k) is None]
        if missing:
            raise ValueError(f"checkpoint metadata lacks {missing}")
        (tmp / META).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old)  # onto the empty folder we just made
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def training_data_root(meta: dict[str, Any]) -> str | None:
    """The ``--data-root`` a checkpoint was trained from (None for the embedded digits or a converted model):
    the default data folder of its evaluation."""
    return (meta.get("train_config") or {}).get("data_root")


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Validate the directory's layout and metadata without loading weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint {directory} is not a directory; pass the folder holding {WEIGHTS} and {META}")
    weights = directory / WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(
                f"{directory} holds {pickles[0]} but no {WEIGHTS}: pickled checkpoints are never loaded; "
                f"convert it with `dmlbench convert {directory / pickles[0]} --backbone ID --dataset ID`"
            )
        raise UserError(f"{directory} has no {WEIGHTS}; a checkpoint is a folder with {WEIGHTS} and {META}")
    try:
        meta = json.loads((directory / META).read_text())
    except FileNotFoundError:
        raise UserError(f"{directory} has no {META}; a checkpoint is a folder with {WEIGHTS} and {META}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{directory / META} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{directory / META} must hold a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"{directory / META} lacks {', '.join(missing)}")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise UserError(f"{directory / META} has schema_version {meta['schema_version']}, expected {SCHEMA_VERSION}")
    dim = meta["embedding_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_EMBEDDING_DIM:
        raise UserError(f"{directory / META}: embedding_dim must be an integer in 1..{MAX_EMBEDDING_DIM}, got {dim!r}")
    if not isinstance(meta["backbone_kwargs"], dict):
        raise UserError(f"{directory / META}: backbone_kwargs must be a JSON object, got {meta['backbone_kwargs']!r}")
    if meta["backbone"] not in backbones.BACKBONES:
        raise UserError(f"{directory / META} names unknown backbone {meta['backbone']!r}; "
                        f"known: {', '.join(backbones.list_backbones())}")
    return meta


def build_model(meta: dict[str, Any]) -> nn.Module:
    kwargs = dict(meta["backbone_kwargs"])
    kwargs["embedding_dim"] = meta["embedding_dim"]
    try:
        return backbones.create(meta["backbone"], **kwargs, pretrained=False)
    except TypeError as e:
        raise UserError(f"backbone arguments {kwargs} do not fit {meta['backbone']}: {e}") from None


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from ``meta.json``, check the weights' sha256, load them strictly; eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory)
    digest = file_sha256(directory / WEIGHTS)
    if digest != meta["weights_sha256"]:
        raise UserError(f"{directory / WEIGHTS} does not match the sha256 in {META} (file damaged or replaced)")
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{directory / WEIGHTS} is not a readable safetensors file: {e}") from None
    model = build_model(meta)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or extra or bad:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}")
        raise UserError(f"{directory / WEIGHTS} does not fit backbone {meta['backbone']} ({detail})")
    bad_values = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad_values is not None:
        raise UserError(f"{directory / WEIGHTS}: {bad_values} holds NaN or infinite values (a diverged training); "
                        "such a model cannot be evaluated")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def checkpoint_sha256(directory: str | os.PathLike) -> str:
    return read_meta(directory)["weights_sha256"]


def convert_state_dict(source: str | os.PathLike, out: str | os.PathLike, *, backbone: str, dataset: str,
                       embedding_dim: int = 512, key: str | None = None, channels: int | None = None,
                       overwrite: bool = False) -> Path:
    """Bring a plain PyTorch state dict into a checkpoint (``torch.load(weights_only=True)``, no fallback).

    ``channels`` defaults to the dataset's image channels. ``out`` must be new or empty, or (``overwrite``) a
    checkpoint folder; it is checked before anything is read."""
    import pickle

    check_target(out, overwrite)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else "unsupported content"
        raise UserError(f"{source} holds more than plain tensors and was not loaded ({first}); "
                        "save a plain state_dict with torch.save(model.state_dict(), path)") from None
    except (OSError, RuntimeError) as e:
        raise UserError(f"cannot read {source} as a torch state dict: {str(e).splitlines()[0]}") from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise UserError(f"{source} has no entry {key!r}")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source} is not a flat state dict of tensors; pass --key NAME for a nested one")
    if channels is None:
        from robustbench_dml import datasets

        channels = datasets.info(dataset).channels
    model = backbones.create_for_data(backbone, embedding_dim=embedding_dim, channels=channels)
    state = _clean_state_dict(obj)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{source} does not fit backbone {backbone}: {str(e).splitlines()[0]}") from None
    return save_checkpoint(out, model, {"dataset": dataset, "defense": "external", "defense_config": {},
                                        "source": str(source)}, replace=overwrite)
