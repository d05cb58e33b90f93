"""``dmlbench run``: the main job. Train a defense, evaluate it with a suite (the dataset's by default), record the result,
publish a new leaderboard version and print the leaderboard with the new row marked."""

from __future__ import annotations

from robustbench_dml.cli.common import (
    add_device,
    add_plan,
    add_progress,
    add_train_options,
    is_rank0,
    parse_attacks,
    print_plan,
    progress_mode,
    show_progress,
    train_config,
)
from robustbench_dml.cli.leaderboard import add_leaderboard_dir


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train, attack, score and rank a defense in one command")
    add_train_options(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--suite", help="attack suite (default: the dataset's published one, rob28 or rob224; "
                                   "rankaa28 / rankaa224 for the stronger suite)")
    g.add_argument("--eval-seed", type=int, default=0, help="seed of the attacks' random selections")
    g.add_argument("--attacks", help="comma-separated subset of the suite, e.g. GTT,ES, for a smoke run (its row is "
                                     "marked 'partial suite' on the leaderboard)")
    g.add_argument("--max-queries", type=int, help="attack only the first N test images (a partial row)")
    g.add_argument("--name", help="submitter name on the leaderboard (default: your user name)")
    add_leaderboard_dir(p)
    add_device(p)
    add_progress(p)
    add_plan(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attacks.suites import get_suite
    from robustbench_dml.cli.evaluate import evaluate_checkpoint, suite_for
    from robustbench_dml.cli.report import (
        attack_table,
        benign_table,
        console,
        protocol_lines,
    )
    from robustbench_dml.cli.submit import publish, show_board
    from robustbench_dml.cli.train import _log_epoch
    from robustbench_dml.leaderboard import LeaderboardStore
    from robustbench_dml.leaderboard.records import check_submitter
    from robustbench_dml.runtime import process_group, resolve_device
    from robustbench_dml.training import check_run_folder, train

    cfg = train_config(args)
    suite = suite_for(cfg.dataset, args.suite)
    from robustbench_dml.evaluation import EvalConfig

    # the evaluation's and the record's settings are checked before any training (a bad --eval-seed, --attacks or
    # --name costs nothing); the evaluation builds its own from the same options
    EvalConfig(suite, attacks=parse_attacks(args.attacks), max_queries=args.max_queries, seed=args.eval_seed)
    if args.name is not None:
        check_submitter(args.name)
    plan = dict(training=True, evaluation=True, max_queries=args.max_queries, attacks=args.attacks, suite=suite)
    if args.plan:
        print_plan(cfg, **plan)
        return 0
    if is_rank0():  # the rank that publishes; under torchrun a refusal there stops every rank
        check_run_folder(args.out, cfg, args.resume)  # before the plan measures anything
        LeaderboardStore(args.leaderboard_dir).check_writable(cfg.dataset, get_suite(suite).board)
    if not args.quiet and is_rank0():  # the estimate comes before the compute
        print_plan(cfg, **plan, show_config=False)
    progress = show_progress(args)
    with process_group(resolve_device(cfg.device)):  # under torchrun: one group for training and evaluation
        summary = train(cfg, args.out, resume=args.resume, progress=progress,
                        on_epoch=None if progress or args.quiet else _log_epoch)
        if summary.rank == 0:
            print(f"trained {cfg.defense} on {cfg.dataset}: {summary.steps} steps, "
                  f"{summary.seconds_per_epoch:.1f} s/epoch")
            print(summary.checkpoint)
        # every rank evaluates (the query batches are shared); rank 0 reports and publishes
        result, out = evaluate_checkpoint(summary.checkpoint, suite=suite, seed=args.eval_seed, device=args.device,
                                          data_root=cfg.data_root, progress=progress_mode(args),
                                          attacks=args.attacks, max_queries=args.max_queries,
                                          overwrite=True)  # the run owns its folder: --resume finishes it
    if not is_rank0():
        return 0
    con = console()
    con.print(benign_table(result.benign))
    con.print(attack_table(result))
    for line in protocol_lines(result):
        con.print(line)
    print(out)
    if not result.eligible:
        print("note: the suite was overridden (--attacks/--max-queries): the row is published as partial")
    from robustbench_dml.leaderboard.recipes import Recipe

    recipe = Recipe.of(cfg, EvalConfig.from_result(result), result.checkpoint["sha256"])
    record, version, added = publish(result, leaderboard_dir=args.leaderboard_dir, name=args.name,
                                     partial_ok=not result.eligible, recipe=recipe)
    show_board(record, version, added, args.leaderboard_dir)
    return 0
