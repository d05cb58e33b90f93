"""``dmlbench train``: train a defense and write its checkpoint (the path is printed last)."""

from __future__ import annotations

from robustbench_dml.cli.common import (add_device, add_plan, add_progress, add_train_options, is_rank0, print_plan,
                                        show_progress, train_config)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a defense and write a checkpoint",
                       description="Train a defense; print the checkpoint directory as the last line.")
    add_train_options(p)
    add_device(p)
    add_progress(p)
    add_plan(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from robustbench_dml.training import check_run_folder, train

    cfg = train_config(args)
    if args.plan:
        print_plan(cfg, training=True, evaluation=False)
        return 0
    if is_rank0():  # refused before the plan measures anything
        check_run_folder(args.out, cfg, args.resume)
    if not args.quiet and is_rank0():  # the estimate comes before the compute
        print_plan(cfg, training=True, evaluation=False, show_config=False)
    summary = train(cfg, args.out, resume=args.resume, progress=show_progress(args),
                    on_epoch=None if show_progress(args) or args.quiet else _log_epoch)
    if summary.rank != 0:
        return 0
    print(f"trained {cfg.defense} on {cfg.dataset}: {summary.steps} steps, "
          f"{summary.seconds_per_epoch:.1f} s/epoch, benign R@1 {summary.benign_r1:.1f}")
    print(summary.checkpoint)
    return 0


def _log_epoch(record: dict) -> None:
    extra = f" R@1 {record['R@1']:.1f}" if "R@1" in record else ""
    print(f"epoch {record['epoch']}: loss {record['loss']:.4f} ({record['seconds']:.1f} s){extra}", flush=True)
