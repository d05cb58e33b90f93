"""Argument groups and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from robustbench_dml.config import TrainConfig
from robustbench_dml.errors import UserError


def protected_folder(folder: Path) -> str | None:
    """What ``folder`` or a folder above it is that no output may be written into: a checkpoint folder
    (``meta.json`` beside ``model.safetensors``) or a leaderboard store (a board's ``latest`` pointer beside its
    manifests, or a store's ``records`` with boards beside it); None when neither."""
    for d in (folder, *folder.parents):
        if (d / "meta.json").is_file() and (d / "model.safetensors").exists():
            return f"the checkpoint folder {d}"
        if (d / "latest").is_file() and any(d.glob("v*.manifest.json")):
            return f"the leaderboard store's board {d}"
        if (d / "records").is_dir() and any(d.glob("*/*/latest")):
            return f"the leaderboard store {d}"
    return None


def check_output(output: str | None, overwrite: bool = False, inputs: tuple = (), *,
                 make_folder: bool = False) -> None:
    """An output file the user named: refused if it is a folder, its folder does not exist (a mistyped path is not
    created; ``make_folder`` for a command's own default location), it is one of the command's ``inputs``, inside a
    checkpoint folder or a leaderboard store (:func:`protected_folder`; ``--overwrite`` never reaches those), or
    if it exists (unless ``overwrite``)."""
    if output is None:
        return
    path = Path(output)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; name a file")
    if not make_folder and not path.parent.is_dir():
        raise UserError(f"the folder of output {path} does not exist; create it first or name a file in an "
                        "existing folder")
    target = path.resolve()
    if any(target == Path(i).resolve() for i in inputs):
        raise UserError(f"output {path} is one of this command's inputs; name a new file")
    inside = protected_folder(target.parent)
    if inside:
        raise UserError(f"output {path} is inside {inside}, which commands only read; write it elsewhere")
    if path.exists() and not overwrite:
        raise UserError(f"output {path} already exists; pass --overwrite to replace it or name a new file")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="plain progress lines instead of bars on a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bars or lines")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on an interactive terminal, never in CI or logs."""
    return sys.stderr.isatty() and not os.environ.get("CI") and not getattr(args, "no_progress", False) \
        and not getattr(args, "quiet", False)


def progress_mode(args: argparse.Namespace) -> str | None:
    """``"bar"`` on a terminal, ``"log"`` (plain periodic lines) in logs and CI, None with ``--quiet``."""
    if getattr(args, "quiet", False):
        return None
    return "bar" if show_progress(args) else "log"


def add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--defense", default="vanilla", help="defense id (dmlbench list defenses); default vanilla")
    g.add_argument("--dataset", default="digits", help="dataset id (dmlbench list datasets); default digits")
    g.add_argument("--data-root", help="folder holding the dataset in its official layout")
    g.add_argument("--backbone", help="backbone id (default: the dataset preset's)")
    g.add_argument("--embedding-dim", type=int, default=512, help="embedding size (default 512)")
    g.add_argument("--epochs", type=int, help="SPC-2 epochs (preset: 8 for 28x28, 75 for 224x224)")
    g.add_argument("--batch-size", type=int, help="pairs per batch (preset: 128 for 28x28, 56 for 224x224)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default: the preset's, 1e-3 at 28x28, 1e-5 at 224)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default: the preset's, 1e-7 / 4e-4)")
    g.add_argument("--pgd-steps", type=int, help="training-time PGD steps of the defense's adversary")
    g.add_argument("--set", dest="defense_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the defense's config (JSON value), e.g. --set lam=0.05")
    g.add_argument("--seed", type=int, default=0, help="training seed: one seed reproduces the run bit for bit")
    g.add_argument("--threads", type=int, help="CPU threads for torch and faiss (default: all available cores)")
    g.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    g.add_argument("--train-subset", type=int, metavar="N",
                   help="train on a seeded class-stratified subset of N training images (budgeted studies)")
    pre = g.add_mutually_exclusive_group()
    pre.add_argument("--no-pretrained", action="store_true", help="train a ResNet from scratch")
    pre.add_argument("--pretrained-weights", metavar="FILE", help="torchvision ImageNet weights file for ResNets")
    g.add_argument("--out", help="run directory (default runs/DATASET/DEFENSE/seedS)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")


def parse_assignments(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def train_config(args: argparse.Namespace) -> TrainConfig:
    params = parse_assignments(args.defense_set)
    if args.pgd_steps is not None:
        params["steps"] = args.pgd_steps
    pretrained = False if args.no_pretrained else (args.pretrained_weights or None)
    return TrainConfig(
        defense=args.defense, dataset=args.dataset, data_root=args.data_root, backbone=args.backbone,
        embedding_dim=args.embedding_dim, pretrained=pretrained, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=args.device, threads=args.threads,
        num_workers=args.num_workers, train_subset=args.train_subset, defense_params=params,
    )


def parse_attacks(text: str | None) -> list[str] | None:
    """``--attacks`` as a list of attack ids (None: the whole suite). Given but naming no attack (``--attacks ""``)
    is refused, never read as the whole suite."""
    if text is None:
        return None
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise UserError("--attacks names no attack; give ids such as CA+,GTT (dmlbench list attacks), or leave it out "
                        "for the whole suite")
    return names


def is_rank0() -> bool:
    """Not a non-zero rank of a torchrun launch (only rank 0 measures and prints plans)."""
    return int(os.environ.get("RANK", "0")) == 0


def add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", action="store_true",
                   help="print the resolved configuration, the work in forward/backward passes and a measured "
                        "estimate of the time on this device, then stop")


def print_plan(cfg, *, training: bool, evaluation: bool, max_queries: int | None = None,
               attacks: str | None = None, checkpoint_model=None, show_config: bool = True, **eval_options):
    """Measure and print the plan of a job (:mod:`robustbench_dml.plan`); returns it."""
    from robustbench_dml.plan import Plan, gpu_note, plan_evaluation, plan_training
    from robustbench_dml.runtime import resolve_device

    if training:
        result, model, cfg = plan_training(cfg)
    else:
        result = Plan(device=str(resolve_device(cfg.device)), train_steps=0, train_passes=(0, 0),
                      seconds_per_step=0.0, eval_batches=0)
        model = checkpoint_model.to(resolve_device(cfg.device))
    if show_config and training:
        print(cfg.to_json())
    if evaluation:
        plan_evaluation(result, model, dataset=cfg.dataset, data_root=cfg.data_root, device=resolve_device(cfg.device),
                        max_queries=max_queries, attacks=parse_attacks(attacks),
                        **eval_options)
    for line in result.lines(training=training, evaluation=evaluation):
        print(f"plan: {line}", flush=True)
    note = gpu_note(result, cfg.dataset)
    if note:
        print(note, flush=True)
    return result
