"""The one training loop: data, optimiser, schedule, devices, DDP, resume, progress and checkpoints.

A defense (``defenses/``) supplies only model preparation and the per-batch loss. Layout of a run directory::

    OUT/checkpoint/{model.safetensors, meta.json}   the result (rewritten atomically after every epoch)
    OUT/config.json                                 the resolved TrainConfig
    OUT/train_state.pt                              resume state (tensors and numbers only; weights_only load)
    OUT/history.jsonl                               one line of losses, statistics and benign R@1 per epoch
                                                    (and the collapse diagnostic, :data:`BENIGN_KEYS`)

Resumption is exact at epoch boundaries: the batch order, the pair partners and every defense's random
choices come from generators derived from (seed, epoch) and (seed, step), never from global state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

import defenses
from defenses.base import StepContext
from robustbench_dml import backbones, datasets
from robustbench_dml.checkpoint import save_checkpoint
from robustbench_dml.config import PRESETS, TrainConfig
from robustbench_dml.datasets.base import stratified_subset
from robustbench_dml.datasets.samplers import SPC2BatchSampler
from robustbench_dml.errors import UserError
from robustbench_dml.files import atomic_write_bytes, atomic_write_text, run_lock
from robustbench_dml.progress import Progress
from robustbench_dml.numerics import TRAINING, applied
from robustbench_dml.runtime import (dist_info, generator, process_group, rank_device, resolve_device,
                                     seed_everything, set_threads)

STATE_FILE = "train_state.pt"


@dataclass
class TrainSummary:
    checkpoint: Path
    epochs: int
    steps: int
    seconds_per_epoch: float
    benign_r1: float | None
    forward_passes: int
    backward_passes: int
    rank: int = 0


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / cfg.dataset / cfg.defense / f"seed{cfg.seed}"


def build(cfg: TrainConfig):
    """Resolve ``cfg`` against the dataset's preset; build the defense and the prepared model."""
    info = datasets.info(cfg.dataset)
    preset = PRESETS[info.preset]
    defense_cls = defenses.DEFENSES.get(cfg.defense)
    if cfg.backbone is None:
        cfg = dataclasses.replace(cfg, backbone=defense_cls.preferred_backbones.get(info.preset, preset.backbone))
    cfg = cfg.resolve(preset)
    names = [f.name for f in dataclasses.fields(defense_cls.Config)]
    unknown = sorted(set(cfg.defense_params) - set(names))
    if unknown:
        raise UserError(f"defense {cfg.defense} has no option {', '.join(unknown)}; its options: {', '.join(names)}")
    try:
        defense = defense_cls(preset=info.preset, **cfg.defense_params)
    except (TypeError, ValueError) as e:  # a value of the wrong type or out of range
        raise UserError(f"defense {cfg.defense}: {e} (check the --set values)") from None
    model = backbones.create_for_data(cfg.backbone, embedding_dim=cfg.embedding_dim, channels=info.channels,
                                      pretrained=cfg.pretrained)
    if getattr(model, "input_size", info.image_size) != info.image_size:
        raise UserError(f"backbone {cfg.backbone} takes {model.input_size}x{model.input_size} images but "
                        f"{cfg.dataset} has {info.image_size}x{info.image_size}; pick a matching --backbone")
    spec, identity = model.spec, getattr(model, "pretrained_identity", None)
    model = defense.prepare_model(model)
    model.spec, model.pretrained_identity = spec, identity
    return cfg, info, defense, model


@dataclass
class Setup:
    """What a training job is made of before its first step: the resolved configuration, the dataset's
    description, the defense, the prepared model (on the CPU), the training split and its batch sampler."""

    cfg: TrainConfig
    info: datasets.DatasetInfo
    defense: defenses.Defense
    model: torch.nn.Module
    train_set: object
    sampler: SPC2BatchSampler


def prepare(cfg: TrainConfig, *, rank: int = 0, world: int = 1) -> Setup:
    """The training split (its ``train_subset`` when set), :func:`build`, and the SPC-2 sampler of this rank; shared
    by :func:`train` and the cost estimate (:func:`robustbench_dml.plan.plan_training`)."""
    train_set = datasets.create(cfg.dataset, root=cfg.data_root, split="train")
    if cfg.train_subset is not None:
        train_set = stratified_subset(train_set, cfg.train_subset)
    cfg, info, defense, model = build(cfg)
    sampler = SPC2BatchSampler(train_set.labels, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    if len(sampler) == 0:
        raise UserError(f"{cfg.dataset} has {len(train_set)} training images, fewer than one batch of "
                        f"{cfg.batch_size * world} pairs; lower --batch-size")
    return Setup(cfg, info, defense, model, train_set, sampler)


def training_step(setup: Setup, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epoch: int,
                  step: int, gen: torch.Generator):
    """One defense step in training mode at (``epoch``, global ``step``) with the step's generator ``gen``; returns
    the defense's :class:`~defenses.base.StepResult` (the loss not yet backpropagated)."""
    cfg = setup.cfg
    ctx = StepContext(epoch=epoch, max_epochs=cfg.epochs, global_step=step, generator=gen, dataset=cfg.dataset)
    setup.defense.train_mode(model)
    return setup.defense.training_step(model, images, labels, ctx)


def _save_state(path: Path, model, optimizer, defense, epoch: int, step: int, counts: list[int]) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "defense": defense.state_dict(),
                "epoch": epoch, "global_step": step, "counts": counts}, buf)
    atomic_write_bytes(path, buf.getvalue())


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, *, resume: bool = False,
          progress: bool = False, on_epoch: Callable[[dict], None] | None = None) -> TrainSummary:
    """Train ``cfg.defense`` on ``cfg.dataset``; write the run directory; return where the checkpoint is.
    Deterministic kernels throughout (:data:`robustbench_dml.numerics.TRAINING`): on the CPU one seed gives
    one set of weights at a given thread count, in any process."""
    device = resolve_device(cfg.device)
    with applied(TRAINING, device), process_group(device) as distributed:
        return _train(cfg, out, distributed=distributed, resume=resume, progress=progress, on_epoch=on_epoch)


def _train(cfg: TrainConfig, out, *, distributed: bool, resume: bool, progress: bool, on_epoch) -> TrainSummary:
    device = rank_device(resolve_device(cfg.device))
    rank, world = dist_info()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = Path(out) if out is not None else default_out(cfg)
    if out.exists() and not out.is_dir():  # before the lock, which would make a folder there
        raise UserError(f"{out} is a file, not a run directory; choose another --out")
    with run_lock(out, "training into") if rank == 0 else contextlib.nullcontext():  # one writer per run folder
        return _train_locked(cfg, out, device, rank, world, distributed=distributed, resume=resume,
                             progress=progress, on_epoch=on_epoch)


def check_run_folder(out: str | os.PathLike | None, cfg: TrainConfig, resume: bool) -> None:
    """Refuse, before anything is measured or computed, a run folder that is a file, or one that already holds a
    run when ``resume`` is not asked for."""
    out = Path(out) if out is not None else default_out(cfg)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a run directory; choose another --out")
    started = out.is_dir() and any(p.name != "config.json" for p in out.iterdir())  # a failed start leaves config.json
    if started and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --out to start elsewhere")


def _train_locked(cfg: TrainConfig, out: Path, device: torch.device, rank: int, world: int, *, distributed: bool,
                  resume: bool, progress: bool, on_epoch) -> TrainSummary:
    state_path = out / STATE_FILE
    if rank == 0:
        check_run_folder(out, cfg, resume)
    setup = prepare(cfg, rank=rank, world=world)
    cfg, info, defense, train_set, sampler = setup.cfg, setup.info, setup.defense, setup.train_set, setup.sampler
    test_set = datasets.create(cfg.dataset, root=cfg.data_root, split="test") if rank == 0 else None
    model = setup.model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, step, counts = 0, 0, [0, 0]
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        defense.load_state_dict(state["defense"])
        start_epoch, step, counts = state["epoch"], state["global_step"], list(state["counts"])
    ddp_model = model
    if distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", cfg.to_json() + "\n")
    history = out / "history.jsonl"
    bar = Progress(progress and rank == 0, total=(cfg.epochs - start_epoch) * len(sampler),
                    title=f"{cfg.defense} on {cfg.dataset}")
    epoch_seconds: list[float] = []
    benign_r1, warned = None, False
    with bar:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            torch.manual_seed(int(generator(cfg.seed, "augment", epoch).initial_seed()))
            loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                                generator=generator(cfg.seed, "loader", epoch))
            t0, losses, stats_sum, stats_n = time.perf_counter(), [], {}, {}
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                result = training_step(setup, ddp_model, images, labels, epoch=epoch, step=step,
                                       gen=generator(cfg.seed, "step", step))
                if not torch.isfinite(result.loss.detach()).all():
                    raise UserError(f"training diverged: the loss became {float(result.loss.detach())} at epoch "
                                    f"{epoch + 1}, step {step + 1}; lower --lr or check the --set values (the last "
                                    f"good epoch is kept in {out})")
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                optimizer.step()
                counts[0] += result.n_forward
                counts[1] += result.n_backward
                step += 1
                losses.append(float(result.loss.detach()))
                for k, v in result.stats.items():  # a statistic is averaged over the steps that report it
                    stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
                    stats_n[k] = stats_n.get(k, 0) + 1
                bar.advance(f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}" + "".join(
                    f" {k} {float(v):.3g}" for k, v in result.stats.items()))
            epoch_seconds.append(time.perf_counter() - t0)
            if rank != 0:
                continue
            record = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / len(losses),
                      "seconds": epoch_seconds[-1],
                      **{k: v / stats_n[k] for k, v in stats_sum.items()}}
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                record.update(_benign_metrics(model, defense, test_set, device))
                benign_r1 = record["R@1"]
                first = _first_value(history, "inter_class_distance", record["inter_class_distance"])
                if not warned and record["inter_class_distance"] < COLLAPSE_FRACTION * first:
                    warned = True
                    print(f"dmlbench: warning: the embedding space is collapsing: mean inter-class distance "
                          f"{record['inter_class_distance']:.3f} at epoch {epoch + 1}, below {COLLAPSE_FRACTION} x "
                          f"the first evaluated epoch's {first:.3f} (docs/training.md, Collapse)", file=sys.stderr,
                          flush=True)
            with history.open("a") as f:
                f.write(json.dumps(record) + "\n")
            _write_checkpoint(out, model, defense, cfg, info, epoch + 1, counts, step,
                              {k: record[k] for k in BENIGN_KEYS if k in record})
            _save_state(state_path, model, optimizer, defense, epoch + 1, step, counts)
            if on_epoch is not None:
                on_epoch(record)
    if distributed:  # every rank returns once rank 0 has written the last checkpoint
        torch.distributed.barrier()
    seconds_per_epoch = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else 0.0
    if rank == 0:  # the whole run, across resumptions (this call may have trained some epochs or none)
        seconds_per_epoch, benign_r1 = _run_totals(history)
    return TrainSummary(checkpoint=out / "checkpoint", epochs=cfg.epochs, steps=step,
                        seconds_per_epoch=seconds_per_epoch, benign_r1=benign_r1, forward_passes=counts[0],
                        backward_passes=counts[1], rank=rank)


#: what every evaluated epoch records about the test split and the checkpoint keeps of the last one
BENIGN_KEYS = ("R@1", "entanglement", "intra_class_distance", "inter_class_distance")
#: an inter-class distance below this fraction of the first evaluated epoch's prints the collapse warning
COLLAPSE_FRACTION = 0.5


def _run_totals(history: Path) -> tuple[float, float | None]:
    """Mean seconds per epoch and the last benign R@1 over every epoch of ``history.jsonl`` (a redone epoch counts
    once, its last record)."""
    records = {}
    for line in history.read_text().splitlines():
        record = json.loads(line)
        records[record["epoch"]] = record
    seconds = [r["seconds"] for r in records.values()]
    r1 = [r["R@1"] for _, r in sorted(records.items()) if "R@1" in r]
    return (sum(seconds) / len(seconds) if seconds else 0.0), (r1[-1] if r1 else None)


def _export(model, defense):
    export = getattr(defense, "export_model", None)
    return export(model) if export is not None else model


def _benign_metrics(model, defense, test_set, device) -> dict[str, float]:
    """Benign R@1, the mean intra- and inter-class distances and their ratio, CA-TRIDE's entanglement, on the test
    split (:data:`BENIGN_KEYS`)."""
    from robustbench_dml.gallery import embed
    from robustbench_dml.metrics import collapse_diagnostic, retrieval_metrics

    gallery = embed(_export(model, defense), test_set, device=device)
    r1 = float(retrieval_metrics(gallery.embeddings, gallery.labels, ks=(1,), nmi=False, normalize=False,
                                  maps=False)["R@1"])
    return {"R@1": r1, **collapse_diagnostic(gallery.embeddings, gallery.labels)}


def _first_value(history: Path, key: str, default: float) -> float:
    """``key`` of the first record of ``history.jsonl`` that has it (``default`` when none has)."""
    if history.is_file():
        for line in history.read_text().splitlines():
            record = json.loads(line)
            if key in record:
                return float(record[key])
    return default


def _write_checkpoint(out: Path, model, defense, cfg: TrainConfig, info, epochs_done: int, counts, step,
                      benign: dict[str, float]) -> None:
    exported = _export(model, defense)
    exported.spec = model.spec
    save_checkpoint(out / "checkpoint", exported, {
        "pretrained_weights": getattr(model, "pretrained_identity", None),
        "dataset": cfg.dataset,
        "image_size": info.image_size,
        "preset": info.preset,
        "defense": cfg.defense,
        "defense_config": defense.config.to_dict(),
        "train_config": cfg.to_dict(),
        "seed": cfg.seed,
        "epochs_done": epochs_done,
        "steps": step,
        "forward_passes": counts[0],
        "backward_passes": counts[1],
        "world_size": dist_info()[1],
        "benign": benign,  # test split at the last evaluated epoch (empty if this epoch was not evaluated)
    }, replace=True)
