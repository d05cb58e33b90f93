"""Checkpoints: a directory holding ``model.safetensors`` and ``meta.json``, nothing else is read.

Loading rebuilds the model from the backbone registry and reads only those two files: no pickle is ever
opened, and the weights' sha256 (recorded in ``meta.json``) is checked first. A model trained elsewhere
comes in through :func:`convert_state_dict`, which uses ``torch.load(weights_only=True)`` and nothing less safe.
"""

from __future__ import annotations

import datetime as _dt
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
from robustbench_dml.files import read_bounded, sha256_file
from robustbench_dml.runtime import versions

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
META = "meta.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
MAX_EMBEDDING_DIM = 65536
REQUIRED_META = ("schema_version", "dataset", "backbone", "backbone_kwargs", "embedding_dim", "defense",
                 "weights_sha256")


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
        # a checkpoint's two names hold regular files; anything else under them (a folder named meta.json) is not ours
        foreign = [n for n in contents if n not in (WEIGHTS, META) or not (directory / n).is_file()]
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
            "weights_sha256": sha256_file(tmp / WEIGHTS),
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
    if weights.exists() and not weights.is_file():
        raise UserError(f"{weights} is not a regular file (a device, FIFO, socket or folder); a checkpoint holds "
                        "its weights as a file")
    if not weights.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(
                f"{directory} holds {pickles[0]} but no {WEIGHTS}: pickled checkpoints are never loaded; "
                f"convert it with `dmlbench convert {directory / pickles[0]} --backbone ID --dataset ID`"
            )
        raise UserError(f"{directory} has no {WEIGHTS}; a checkpoint is a folder with {WEIGHTS} and {META}")
    try:
        meta = json.loads(read_bounded(directory / META, "meta"))
    except FileNotFoundError:
        raise UserError(f"{directory} has no {META}; a checkpoint is a folder with {WEIGHTS} and {META}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{directory / META} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{directory / META} is not UTF-8 JSON text") from None
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
    if backbones.takes(meta["backbone"], "pretrained"):  # the weights come from the file, never downloaded
        kwargs["pretrained"] = False
    try:
        return backbones.create(meta["backbone"], **kwargs)
    except TypeError as e:
        raise UserError(f"backbone arguments {kwargs} do not fit {meta['backbone']}: {e}") from None


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from ``meta.json``, check the weights' sha256, load them strictly; eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory)
    digest = sha256_file(directory / WEIGHTS)
    if digest != meta["weights_sha256"]:
        raise UserError(f"{directory / WEIGHTS} does not match the sha256 in {META} (file damaged or replaced)")
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{directory / WEIGHTS} is not a readable safetensors file: {e}") from None
    model = build_model(meta)
    problem = _fit_problem(model.state_dict(), state)
    if problem:
        raise UserError(f"{directory / WEIGHTS} does not fit backbone {meta['backbone']} ({problem})")
    bad_values = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad_values is not None:
        raise UserError(f"{directory / WEIGHTS}: {bad_values} holds NaN or infinite values (a diverged training); "
                        "such a model cannot be evaluated")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def checkpoint_sha256(directory: str | os.PathLike) -> str:
    return read_meta(directory)["weights_sha256"]


LAYOUTS = ("state_dict", "robrank", "mdprop", "pml")
# RobRank's rc2f2 Sequential (conv, relu, pool, conv, relu, pool, flatten, fc, relu, fc) onto our c2f2 trunk/head
# (conv, norm, relu, pool, conv, norm, relu, pool, flatten, fc, norm, relu) + head; norm is Identity in c2f2.
_RC2F2_KEYS = {"backbone.0.": "trunk.0.", "backbone.3.": "trunk.4.", "backbone.7.": "trunk.9.", "backbone.9.": "head."}


class _Record(dict):
    """Stands in, while reading a RobRank or MDProp checkpoint, for the few non-tensor objects such files keep
    beside the weights (hyper-parameters in an ``argparse.Namespace`` or Lightning ``AttributeDict``, MDProp's
    training log object and the numpy scalars in it): a plain dict takes their fields, their constructor arguments
    are ignored, and no code of theirs is imported or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self.update(state if isinstance(state, dict) else {})


_NUMPY_SCALARS = ("numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
#: what each layout's files may name besides tensors and plain containers; anything else is refused unread
_HARMLESS = {
    "state_dict": (),
    "robrank": ("argparse.Namespace", "lightning.fabric.utilities.data.AttributeDict",
                "pytorch_lightning.utilities.parsing.AttributeDict",
                "lightning.pytorch.utilities.parsing.AttributeDict"),
    "mdprop": ("argparse.Namespace", "utilities.logger.Progress_Saver", *_NUMPY_SCALARS),
}


def _read_tensors(source: str | os.PathLike, layout: str) -> Any:
    """``torch.load(weights_only=True)``, with the layout's allow-list of stand-ins (:data:`_HARMLESS`) added."""
    import pickle

    allowed = [(_Record, name) for name in _HARMLESS[layout]]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:  # names what the file would have run (read from its opcodes, nothing executed)
            names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(source)) or "unsupported content"
        except Exception:  # a legacy (non-zip) file: the scanner does not read it
            names = "unsupported content"
        raise UserError(f"{source} holds more than plain tensors ({names}) and was not loaded; save a plain "
                        "state_dict with torch.save(model.state_dict(), path)") from None
    except (OSError, RuntimeError) as e:
        raise UserError(f"cannot read {source} as a torch file: {str(e).splitlines()[0]}") from None


def _resnet_keys(state: dict[str, torch.Tensor], prefix: str, what: str) -> tuple[str, dict[str, torch.Tensor]]:
    """A torchvision-named ResNet under ``prefix`` whose ``fc`` is the embedding layer, as (our backbone id, our
    state dict): 512 features -> ``resnet18``, 2048 -> ``resnet50``."""
    arch = {512: "resnet18", 2048: "resnet50"}.get(state[prefix + "fc.weight"].shape[1])
    if arch is None:
        raise UserError(f"{what}: a ResNet whose features are neither 512 (ResNet-18) nor 2048 (ResNet-50)")
    fc = prefix + "fc."
    return arch, {("head." + k[len(fc):]) if k.startswith(fc) else "trunk." + k[len(prefix):]: v
                  for k, v in state.items()}


def robrank_state_dict(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """A RobRank model's ``state_dict`` (keys ``backbone.*``) as ``(our backbone id, our state dict)``:
    rc2f2 -> ``c2f2``; rres18 / rres50 -> ``resnet18`` / ``resnet50`` (``backbone.fc`` is the embedding head).
    Keys outside ``backbone.`` (loss parameters, buffers of other modules) are not part of the embedding and
    are left out."""
    state = {k: v for k, v in _clean_state_dict(state).items() if k.startswith("backbone.")}
    if "backbone.0.weight" in state:
        unknown = sorted(k for k in state if not any(k.startswith(p) for p in _RC2F2_KEYS))
        if unknown:
            raise UserError(f"RobRank checkpoint has {unknown[0]}, which is not part of rc2f2; only rc2f2, rres18 "
                            "and rres50 are supported")
        out = {}
        for k, v in state.items():
            prefix = next(p for p in _RC2F2_KEYS if k.startswith(p))
            out[_RC2F2_KEYS[prefix] + k[len(prefix):]] = v
        return "c2f2", out
    if "backbone.conv1.weight" in state and "backbone.fc.weight" in state:
        return _resnet_keys(state, "backbone.", "RobRank checkpoint")
    raise UserError("RobRank checkpoint: no backbone.* weights of rc2f2, rres18 or rres50 found")


def mdprop_state_dict(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """An MDProp model's ``state_dict`` (Roth et al.'s DML framework, saved through ``nn.DataParallel``) as
    ``(our backbone id, our state dict)``. Its ResNet uses torchvision's key names with ``fc`` as the embedding
    layer; every BatchNorm is a triple BN whose ``aux_bn1`` / ``aux_bn2`` (the routes of the two adversarial
    halves, unused at test time) are left out, keeping the clean route the paper evaluates. MDProp L2-normalises
    the output and ImageNet-normalises the input in its data pipeline; ours does both in the model and the
    evaluation, so the embeddings agree."""
    state = {k: v for k, v in _clean_state_dict(state).items() if ".aux_bn1." not in k and ".aux_bn2." not in k}
    if "conv1.weight" not in state or "fc.weight" not in state:
        raise UserError("MDProp checkpoint: no ResNet weights (conv1.*, fc.*) under state_dict")
    return _resnet_keys(state, "", "MDProp checkpoint")


def pml_state_dict(trunk: dict[str, torch.Tensor], embedder: dict[str, torch.Tensor]
                   ) -> tuple[str, dict[str, torch.Tensor]]:
    """A pytorch-metric-learning model, its ``trunk`` and ``embedder`` saved as two state dicts (the library's
    ``save_model``: ``trunk_*.pth``, ``embedder_*.pth``), as ``(our backbone id, our state dict)``. The trunk is a
    torchvision ResNet whose ``fc`` was replaced by an identity (the library's recipe); the embedder one linear
    layer (its examples' ``MLP([features, dim])``, whose ``net.0`` and ``last_linear`` name the same layer, or a
    plain ``nn.Linear``), our head. 512 features -> ``resnet18``, 2048 -> ``resnet50``. The library's pipelines
    normalise images with ImageNet's mean and standard deviation in their transforms; ours does it in the model,
    so the embeddings agree."""
    trunk, embedder = _clean_state_dict(trunk), _clean_state_dict(embedder)
    weights = {}
    for k, v in embedder.items():
        if k.endswith("weight") and v.dim() == 2 and not any(v is w or torch.equal(v, w) for w in weights.values()):
            weights[k] = v
    if len(weights) != 1:
        raise UserError(f"pml embedder: {len(weights)} linear layers found ({', '.join(weights) or 'none'}); only "
                        "an embedder of one linear layer maps onto our head")
    (name, weight), = weights.items()
    bias = embedder.get(name[:-len("weight")] + "bias")
    if "conv1.weight" not in trunk or any(k.startswith("fc.") for k in trunk):
        raise UserError("pml trunk: not a torchvision ResNet with its fc replaced by an identity (conv1.* missing "
                        "or fc.* present)")
    state = {"fc.weight": weight, **({"fc.bias": bias} if bias is not None else {}), **trunk}
    return _resnet_keys(state, "", "pml trunk")


_MAPPERS = {"robrank": robrank_state_dict, "mdprop": mdprop_state_dict}


def _fit_problem(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``expected`` (None: fits)."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing:
        return f"missing {missing[:3]}"
    if extra:
        return f"unexpected {extra[:3]}"
    if bad:
        return f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}"
    cast = sorted(k for k in set(expected) & set(state) if expected[k].dtype != state[k].dtype)
    if cast:  # quantised or half weights are not evaluated as if they were the model's own (a silent cast)
        return (f"dtype of {cast[0]} is {str(state[cast[0]].dtype).removeprefix('torch.')}, expected "
                f"{str(expected[cast[0]].dtype).removeprefix('torch.')}")
    return None


def convert_state_dict(source: str | os.PathLike, out: str | os.PathLike, *, backbone: str | None, dataset: str,
                       embedding_dim: int | None = None, key: str | None = None, channels: int | None = None,
                       overwrite: bool = False, layout: str = "state_dict",
                       embedder: str | os.PathLike | None = None) -> Path:
    """Bring a model trained elsewhere into a checkpoint; nothing is executed while reading
    (``torch.load(weights_only=True)``; for RobRank and MDProp files an allow-list of inert stand-ins for the few
    non-tensor objects they hold).

    ``layout``: ``"state_dict"`` (a flat state dict with our keys, or one nested under ``key``), ``"robrank"``
    (a RobRank / PyTorch Lightning checkpoint, mapped by :func:`robrank_state_dict`), ``"mdprop"`` (an MDProp
    checkpoint, mapped by :func:`mdprop_state_dict`) or ``"pml"`` (``source`` the trunk's state dict and
    ``embedder`` the embedder's, pytorch-metric-learning's pair, mapped by :func:`pml_state_dict`); the mappers also
    name the backbone and the embedding size.
    ``embedding_dim`` defaults to what the file tells (its ``head.weight`` rows; else 512); ``channels`` defaults
    to the dataset's image channels. ``out`` must be new or empty, or (``overwrite``) a checkpoint folder; it is
    checked before anything is read."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if (layout == "pml") != (embedder is not None):
        raise UserError("--from pml takes the trunk's file and --embedder FILE (the embedder's); --embedder goes "
                        "with --from pml only")
    check_target(out, overwrite)
    if layout == "pml":
        parts = [_read_tensors(f, "state_dict") for f in (source, embedder)]
        for f, part in zip((source, embedder), parts):
            if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise UserError(f"{f} is not a flat state dict of tensors (pytorch-metric-learning's save_model "
                                "writes one)")
        found, state = pml_state_dict(*parts)
        if backbone is not None and backbone != found:
            raise UserError(f"{source} holds a {found} trunk, not {backbone}; drop --backbone or pass {found}")
        return _save_converted(state, out, backbone=found, dataset=dataset, source=source, layout=layout,
                               embedding_dim=embedding_dim or int(state["head.weight"].shape[0]), channels=channels,
                               overwrite=overwrite)
    obj = _read_tensors(source, layout)
    if key is not None or layout in _MAPPERS:
        key = key or "state_dict"
        if not isinstance(obj, dict) or key not in obj:
            raise UserError(f"{source} has no entry {key!r}" + (
                f"; a {layout} checkpoint holds its weights under state_dict" if layout in _MAPPERS else ""))
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source} is not a flat state dict of tensors; pass --key NAME for a nested one")
    state = _clean_state_dict(obj)
    if layout in _MAPPERS:
        found, state = _MAPPERS[layout](state)
        if backbone is not None and backbone != found:
            raise UserError(f"{source} holds a {found} model, not {backbone}; drop --backbone or pass {found}")
        backbone = found
        embedding_dim = embedding_dim or int(state["head.weight"].shape[0])
    if backbone is None:
        raise UserError("--backbone is needed for a plain state dict (dmlbench list backbones)")
    return _save_converted(state, out, backbone=backbone, dataset=dataset, source=source, layout=layout,
                           embedding_dim=embedding_dim, channels=channels, overwrite=overwrite)


def _save_converted(state: dict[str, torch.Tensor], out, *, backbone: str, dataset: str, source, layout: str,
                    embedding_dim: int | None, channels: int | None, overwrite: bool) -> Path:
    """Load ``state`` strictly into a fresh ``backbone`` and write the checkpoint (a misfit names the option)."""
    head = state.get("head.weight")
    if embedding_dim is None and isinstance(head, torch.Tensor) and head.dim() == 2:
        embedding_dim = int(head.shape[0])  # the file tells the embedding size: its head's rows
    if channels is None:
        from robustbench_dml import datasets

        channels = datasets.info(dataset).channels
    first = next((v for v in state.values() if v.dim() == 4), None)  # the first convolution, in the file's order
    if first is not None and int(first.shape[1]) != channels:
        raise UserError(f"{source}'s first layer takes {int(first.shape[1])}-channel images but the images of "
                        f"{dataset} have {channels}; pass the --dataset the model was trained on")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{source}: {bad} holds NaN or infinite values (a diverged training); nothing was written")
    model = backbones.create_for_data(backbone, embedding_dim=embedding_dim or 512, channels=channels)
    problem = _fit_problem(model.state_dict(), state)
    if problem:
        hint = ""
        if isinstance(head, torch.Tensor) and head.dim() == 2 and int(head.shape[0]) != model.embedding_dim:
            hint = f"; its head gives {int(head.shape[0])}-d embeddings: pass --embedding-dim {int(head.shape[0])}"
        raise UserError(f"{source} does not fit backbone {backbone} ({problem}){hint}")
    model.load_state_dict(state, strict=True)
    return save_checkpoint(out, model, {"dataset": dataset, "defense": "external", "defense_config": {},
                                        "source": str(source), "source_layout": layout}, replace=overwrite)
