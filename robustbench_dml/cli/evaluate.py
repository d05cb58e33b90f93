"""``dmlbench evaluate``: benign metrics, then every attack of a suite, then ERS and ARS, written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from robustbench_dml.cli.common import (add_device, add_plan, add_progress, check_output, is_rank0, parse_attacks,
                                        print_plan, progress_mode, show_progress)
from robustbench_dml.cli.report import attack_table, benign_table, console, protocol_lines
from robustbench_dml.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="attack a checkpoint with a suite and score it (ERS, ARS)",
                       description="Benign metrics, each attack of the suite, then ERS and ARS. Results are saved "
                                   "per attack as they finish: running the same command again resumes.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (model.safetensors + meta.json)")
    add_eval_options(p)
    p.add_argument("--benign-only", action="store_true", help="only the benign retrieval metrics")
    p.add_argument("--json", help="new file to write the result to (default: eval/ beside the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    add_device(p)
    add_progress(p)
    add_plan(p)
    p.set_defaults(func=run)


def add_eval_options(p) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--suite", help="attack suite (default: the dataset's, rob28 or rob224)")
    g.add_argument("--attacks", help="comma-separated subset, e.g. CA+,QA- (not leaderboard-eligible)")
    g.add_argument("--max-queries", type=int, help="attack only the first N test images (not eligible)")
    g.add_argument("--eps", type=float, help="replace the suite's eps, in [0,1] pixel units (not eligible)")
    g.add_argument("--eot", type=int, help="strong suites: average each APGD gradient over N forward passes, for "
                                           "randomised models (N times the cost; not eligible)")
    g.add_argument("--eval-seed", "--seed", type=int, default=0, help="seed of the attacks' random selections")
    g.add_argument("--robrank-compat", action="store_true",
                   help="measure the robrank protocol alone, in the reference code's exact call pattern (default: "
                        "both protocols, corrected and robrank, in one run; docs/protocol.md)")
    g.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained from)")
    g.add_argument("--fast", action="store_const", const="fast", default="exact", dest="numerics",
                   help="TF32 and cuDNN autotuning on GPUs, channels-last convolutions, no deterministic kernels: "
                        "faster (on a CPU about 1.4x for c2f2), not the exact numbers (recorded; not "
                        "leaderboard-eligible; docs/devices.md)")


def eval_folder(checkpoint: Path) -> Path:
    """Where a checkpoint's results go by default: ``RUN/eval`` for a run's ``RUN/checkpoint``, and
    ``PARENT/eval/NAME`` for any other checkpoint folder, so sibling checkpoints (``pair/a``, ``pair/b``) never
    share a result file."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / "eval" if checkpoint.name == "checkpoint" else \
        checkpoint.parent / "eval" / checkpoint.name


def default_json(checkpoint: Path, suite: str, *, attacks: str | None = None, max_queries: int | None = None,
                 eps: float | None = None, robrank_compat: bool = False, numerics: str = "exact",
                 eot: int | None = None) -> Path:
    """``BOARD[-overrides].json`` in the checkpoint's :func:`eval_folder` (the suite version's board name:
    ``rankaa28.v2.json``, version 1's ``rankaa28.json``)."""
    from attacks.suites import board_of

    parts = [board_of(suite)]
    if attacks:
        parts.append("attacks-" + attacks.replace(",", "_").replace("+", "p").replace("-", "m").replace(":", ""))
    if max_queries:
        parts.append(f"q{max_queries}")
    if eps is not None:
        parts.append(f"eps{eps:g}")
    if eot is not None:
        parts.append(f"eot{eot}")
    if robrank_compat:
        parts.append("compat")
    if numerics != "exact":
        parts.append(numerics)
    return eval_folder(checkpoint) / ("-".join(parts) + ".json")


def suite_for(dataset: str, suite: str | None) -> str:
    """``suite`` (default: the dataset's published one), checked to exist and to fit the dataset's input size (a
    suite built on another published suite, rankaa224 on 28x28 data say, is refused in one line)."""
    from attacks.suites import get_suite
    from robustbench_dml import datasets

    native = datasets.info(dataset).suite
    suite = suite or native
    base = get_suite(suite).base_id  # an unknown id is a one-line UserError naming the registered ones
    published = {datasets.info(d).suite for d in datasets.list_datasets()}
    if base in published and base != native:
        raise UserError(f"suite {suite} is for another input size than {dataset}'s; use {native} or a suite built on it")
    return suite


def evaluate_checkpoint(checkpoint: Path, *, suite: str | None = None, attacks: str | None = None,
                        max_queries: int | None = None, eps: float | None = None, seed: int = 0,
                        device: str = "auto", robrank_compat: bool = False, json_path: str | None = None,
                        data_root: str | None = None, progress: bool | str | None = False,
                        overwrite: bool = False, plan: str | None = None, numerics: str = "exact",
                        eot: int | None = None):
    """Run a suite on ``checkpoint`` (the dataset's suite by default); write and return (result, path).
    ``plan``: ``"only"`` prints the measured plan and returns (None, None); ``"first"`` prints it, then evaluates."""
    from robustbench_dml import datasets
    from robustbench_dml.checkpoint import read_meta
    from robustbench_dml.evaluation import EvalConfig, discard_state, evaluate

    meta = read_meta(checkpoint)
    if meta["dataset"] not in datasets.DATASETS:
        raise UserError(f"{checkpoint}/meta.json names unknown dataset {meta['dataset']!r}")
    suite = suite_for(meta["dataset"], suite)
    config = EvalConfig(suite, attacks=parse_attacks(attacks),
                        max_queries=max_queries, eps=eps, seed=seed, robrank_compat=robrank_compat,
                        numerics=numerics, eot=eot)
    default = default_json(checkpoint, suite, attacks=attacks, max_queries=max_queries, eps=eps,
                           robrank_compat=robrank_compat, numerics=numerics, eot=eot)
    if plan != "only":  # an existing result is replaced only with --overwrite, the default file included
        check_output(json_path or default, overwrite, make_folder=json_path is None)
    if plan is not None and is_rank0():
        from types import SimpleNamespace

        from robustbench_dml.checkpoint import load_checkpoint, training_data_root

        model, _ = load_checkpoint(checkpoint)
        job = SimpleNamespace(dataset=meta["dataset"], data_root=data_root or training_data_root(meta), device=device)
        probe = print_plan(job, training=False, evaluation=True, max_queries=max_queries, attacks=attacks,
                           checkpoint_model=model, suite=suite, robrank_compat=robrank_compat).probe_seconds
        if plan == "only":
            return None, None
    else:
        probe = ()
    out = Path(json_path) if json_path else default
    from robustbench_dml.runtime import process_group, resolve_device

    state = out.parent / "state"  # what an interrupted evaluation resumes from, removed once the result is written
    with process_group(resolve_device(device)):  # under torchrun: the query batches are shared among the ranks
        result = evaluate(checkpoint, config, device=device, state_dir=state, progress=progress, data_root=data_root,
                          probe=probe)
    if is_rank0():
        result.to_json(out)
        discard_state(state, result)
    return result, out


def run(args) -> int:
    checkpoint = Path(args.checkpoint)
    con = console()
    if args.benign_only:
        return _benign(checkpoint, args, con)
    result, out = evaluate_checkpoint(
        checkpoint, suite=args.suite, attacks=args.attacks, max_queries=args.max_queries, eps=args.eps,
        seed=args.eval_seed, device=args.device, robrank_compat=args.robrank_compat, json_path=args.json,
        data_root=args.data_root, progress=progress_mode(args), overwrite=args.overwrite,
        plan="only" if args.plan else None if args.quiet else "first", numerics=args.numerics, eot=args.eot)
    if result is None or not is_rank0():
        return 0
    con.print(benign_table(result.benign))
    con.print(attack_table(result))
    for line in protocol_lines(result):
        con.print(line)
    if not result.eligible:
        con.print("note: suite overridden (" + ", ".join(
            f"{k}={v}" for k, v in result.suite["overrides"].items() if v is not None) + "): not leaderboard-eligible")
    print(out)
    return 0


def _benign(checkpoint: Path, args, con) -> int:
    from robustbench_dml import datasets
    from robustbench_dml.checkpoint import load_checkpoint, training_data_root
    from robustbench_dml.gallery import embed
    from robustbench_dml.metrics import collapse_diagnostic, retrieval_metrics
    from robustbench_dml.runtime import resolve_device

    device = resolve_device(args.device)
    out = Path(args.json) if args.json else eval_folder(checkpoint) / "benign.json"
    check_output(out, args.overwrite, make_folder=not args.json)
    model, meta = load_checkpoint(checkpoint, device)
    test = datasets.create(meta["dataset"], root=args.data_root or training_data_root(meta), split="test")
    gallery = embed(model, test, device=device, progress=show_progress(args))
    metrics = retrieval_metrics(gallery.embeddings, gallery.labels, seed=args.eval_seed, normalize=False)
    metrics.update(collapse_diagnostic(gallery.embeddings, gallery.labels, seed=args.eval_seed))  # as a full one's
    con.print(benign_table(metrics))
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"checkpoint": str(checkpoint), "sha256": meta["weights_sha256"], "dataset": meta["dataset"],
               "num_items": len(test), "benign": metrics}
    from robustbench_dml.files import atomic_write_text

    atomic_write_text(out, json.dumps(payload, indent=1) + "\n")
    print(out)
    return 0

