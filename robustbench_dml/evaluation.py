"""Run an attack suite against a model: benign metrics, every attack over the test split, ERS/ARS, provenance.

Protocol (RobRank; ``docs/protocol.md``): the gallery is the whole test split embedded once in
loader order (eval mode); the queries are the first ``max_queries`` items of that split (all by default) in
loader order, attacked in batches of the suite's ``batch_size``; each attacked image is a gallery member and is
told its gallery index (self). Every random selection of batch ``b`` of attack ``a`` comes from
``runtime.generator(seed, a, b)``, so the numbers do not depend on batch order or on how many processes run.

Protocols (:mod:`robustbench_dml.protocols`): every evaluation measures both ``corrected`` and ``robrank``. Each
attack runs once; GTM and LTM, whose targets the reference's quirks change, run once more with
``robrank_compat=True`` under the same random selections; ES's quirk is a measurement, taken from the same run.
Per-query results are kept in scoring units (``attacks.base``); a protocol's ``raw[key]`` is their mean over
queries (``corrected``) or the mean of per-batch means as the reference reports (``robrank``, quirk Q4). Benign
``R@1`` enters ``raw`` as the same aggregate of the per-query top-1 test (self excluded by index), so ARS's ratios
use exactly the evaluated queries. ``robrank_compat=True`` runs the reference's call pattern alone (the
``robrank`` protocol only), for a like-for-like comparison with its code.

Resumability: with ``state_dir``, each finished attack is written atomically to
``state_dir/<key>/<attack>.json`` (every protocol's results of that attack) where ``<key>`` hashes (checkpoint
sha256, suite hash, seed, overrides, measured protocols); a later call with the same key skips finished attacks
and ends with the same numbers (floats round-trip exactly through JSON). The device is not part of the key. A
state file records its attack's ``revision``; one written by another revision (a changed success rule, say) is
recomputed.

Sharding: when ``torch.distributed`` is initialised (``torchrun``), batch ``b`` runs on rank ``b % world_size``;
per-batch results are gathered with ``all_gather_object``, merged by batch index (no duplicates) and only rank 0
writes state files. Every rank returns the same result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.suites import Suite, get_suite, spec_of
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError
from robustbench_dml.files import atomic_write_text, read_bounded
from robustbench_dml.numerics import EXACT, NumericPolicy, applied, get_policy
from robustbench_dml.runtime import dist_info as _dist_info  # a module attribute, so tests can simulate ranks
from robustbench_dml.results import SCHEMA_VERSION, EvaluationResult
from robustbench_dml.scoring import aggregate, batch_ranges

__all__ = ["EvalConfig", "EvalTarget", "EvaluationResult", "SCHEMA_VERSION", "aggregate", "batch_ranges",
           "discard_state", "evaluate", "load_target", "model_target", "state_key"]


# ---------------------------------------------------------------------------------------------- helpers


def model_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes) for models not loaded from a checkpoint."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def state_key(checkpoint_sha: str, suite_hash: str, seed: int, overrides: Mapping[str, Any],
              protocols: Sequence[str]) -> str:
    """The resume state's folder name: everything that decides an attack's results, MKL's mode included (an
    evaluation resumed under another mode would mix results of two numerics under one label)."""
    from robustbench_dml.numerics import cpu_blas_mode

    blob = json.dumps({"checkpoint": checkpoint_sha, "suite": suite_hash, "seed": seed, "overrides": dict(overrides),
                       "protocols": list(protocols), "cpu_blas": cpu_blas_mode(), "state": 4}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def discard_state(state_dir: str | os.PathLike, result: EvaluationResult) -> None:
    """Remove what :func:`evaluate` kept in ``state_dir`` to resume ``result``'s evaluation, once the result is
    written: its attack files, then its folder and ``state_dir`` when they are empty (nothing else is touched)."""
    folder = Path(state_dir) / state_key(result.checkpoint["sha256"], result.suite["hash"], result.seed,
                                         result.suite["overrides"], list(result.protocols))
    attacks = {a for block in result.protocols.values() for a in block.get("success") or {}}
    for attack_id in attacks:
        (folder / _attack_file(attack_id)).unlink(missing_ok=True)
    for d in (folder, Path(state_dir)):
        try:
            d.rmdir()
        except OSError:  # absent, or holding something else: left as it is
            return


def _attack_file(attack_id: str) -> str:
    return attack_id.replace("+", "plus").replace("-", "minus").replace(":", "_") + ".json"


def _gather(local: dict[int, Any], world: int) -> dict[int, Any]:
    """Merge per-batch payloads of every rank by batch index (no duplicates)."""
    if world == 1:
        return local
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    merged: dict[int, Any] = {}
    for part in parts:
        for b, payload in part.items():
            merged.setdefault(b, payload)
    return merged


# ------------------------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation measures; everything in it is recorded in the result (suite id, version and hash, the
    overrides, the seed, the protocols).

    ``suite``: a registered suite id or a :class:`~attacks.suites.Suite`. Overrides of the published suite
    (``attacks``: a subset of its attack ids; ``max_queries``: the first N queries; ``eps``: the radius of every
    attack, pixel units) are recorded and make the result ineligible for a leaderboard. ``seed`` drives every random
    selection. ``robrank_compat``: measure the ``robrank`` protocol alone, in the reference's call pattern (default:
    both protocols). ``numerics``: the float settings (:mod:`robustbench_dml.numerics`; ``"fast"`` is an override
    too). Validated on construction: a bad value is a one-line :class:`UserError`.
    """

    suite: str | Suite = "rob28"
    attacks: tuple[str, ...] | None = None
    max_queries: int | None = None
    eps: float | None = None
    seed: int = 0
    robrank_compat: bool = False
    numerics: str | NumericPolicy = "exact"
    eot: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "numerics", get_policy(self.numerics))
        suite = get_suite(self.suite)
        if self.attacks is not None:
            object.__setattr__(self, "attacks", tuple(self.attacks))
            unknown = [a for a in self.attacks if a not in suite.attack_ids]
            if unknown:
                raise UserError(f"attack(s) {', '.join(unknown)} are not in suite {suite.id}; "
                                f"choose from {', '.join(suite.attack_ids)}")
        from robustbench_dml.config import check_seed

        check_seed(self.seed, "--eval-seed")
        if self.max_queries is not None and int(self.max_queries) < 1:
            raise UserError(f"--max-queries must be a positive integer (got {self.max_queries})")
        if self.eps is not None and not (0 <= float(self.eps) <= 1):
            raise UserError(f"--eps must lie in [0, 1] (pixel units), got {self.eps}")
        if self.eot is not None:
            if suite.engine is None:
                raise UserError(f"--eot needs a strong suite (rankaa28, rankaa224, ...); {suite.id} runs sign-PGD")
            if isinstance(self.eot, bool) or int(self.eot) != self.eot or self.eot < 1:
                raise UserError(f"--eot must be a positive integer (got {self.eot})")
        if self.robrank_compat and P.ROBRANK not in suite.protocols:
            raise UserError(f"suite {suite.id} measures the corrected protocol only; drop --robrank-compat")

    @classmethod
    def from_result(cls, result: EvaluationResult | Mapping[str, Any]) -> EvalConfig:
        """The configuration an evaluation result was measured with (its suite, overrides, seed, protocols and
        float settings), so what a result records about its making is read from the result itself."""
        d = result.to_dict() if isinstance(result, EvaluationResult) else dict(result)
        try:
            suite, over = d["suite"], d["suite"].get("overrides") or {}
            return cls(spec_of(suite["id"], suite["version"]),
                       attacks=None if over.get("attacks") is None else tuple(over["attacks"]),
                       max_queries=over.get("max_queries"), eps=over.get("eps"), seed=int(d["seed"]),
                       robrank_compat=bool(d.get("robrank_compat")), numerics=over.get("numerics", "exact"),
                       eot=over.get("eot"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"evaluation result lacks {exc}; pass the file written by `dmlbench evaluate --json`") \
                from None

    @property
    def suite_obj(self) -> Suite:
        """The suite that runs: the registered one, with the engine's ``eot`` replaced when overridden (a suite of
        its own hash)."""
        suite = get_suite(self.suite)
        if self.eot is None:
            return suite
        return dataclasses.replace(suite, engine=dataclasses.replace(suite.engine, eot=int(self.eot)))

    @property
    def attack_ids(self) -> list[str]:
        """The attacks that run, in the suite's order."""
        return [a for a in self.suite_obj.attack_ids if self.attacks is None or a in self.attacks]

    @property
    def protocols(self) -> tuple[str, ...]:
        return (P.ROBRANK,) if self.robrank_compat else self.suite_obj.protocols

    def runs(self, attack_id: str) -> int:
        """How many times ``attack_id`` runs over the query batches: twice when both protocols are measured and
        the reference's quirks change its targets (GTM, LTM), else once (ES's measurement quirk reads the same
        run)."""
        import attacks as attack_zoo

        twice = len(self.protocols) > 1 and attack_zoo.ATTACKS.get(attack_id).robrank_quirk == "targets"
        return 2 if twice else 1

    @property
    def overrides(self) -> dict[str, Any]:
        out = {"eps": None if self.eps is None else float(self.eps),
               "attacks": None if self.attacks is None else list(self.attacks),
               "max_queries": None if self.max_queries is None else int(self.max_queries)}
        if self.eot is not None:  # only when set, as numerics
            out["eot"] = int(self.eot)
        if self.numerics != EXACT:  # only when set, so the resume keys of default runs stay what they were
            out["numerics"] = self.numerics.name
        return out


@dataclass(frozen=True)
class EvalTarget:
    """The model under evaluation, its test split and its identity (``checkpoint``: sha256, path, meta)."""

    model: nn.Module
    dataset: Any
    checkpoint: dict[str, Any]


def load_target(checkpoint_dir: str | os.PathLike, device: str | torch.device = "cpu",
                data_root: str | None = None) -> EvalTarget:
    """A checkpoint directory (``meta.json`` + weights; loaded without unpickling) and its dataset's test split
    from ``data_root`` (default: the folder it was trained from)."""
    from robustbench_dml import datasets
    from robustbench_dml.checkpoint import checkpoint_sha256, load_checkpoint, training_data_root

    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise UserError(f"checkpoint directory {path} does not exist; pass the folder holding meta.json")
    model, meta = load_checkpoint(path, device)
    dataset = datasets.create(meta["dataset"], root=data_root or training_data_root(meta), split="test")
    return EvalTarget(model, dataset, {"sha256": checkpoint_sha256(path), "path": str(path), "meta": meta})


def model_target(model: nn.Module, meta: Mapping[str, Any] | None = None, dataset=None,
                 data_root: str | None = None) -> EvalTarget:
    """An in-memory model; its test split is ``dataset`` or, by default, ``meta["dataset"]``'s. Its identity is
    ``meta["weights_sha256"]`` or the sha256 of its state dict."""
    from robustbench_dml import datasets
    from robustbench_dml.checkpoint import training_data_root

    meta = dict(meta or {})
    if dataset is None:
        if "dataset" not in meta:
            raise UserError("an in-memory model needs a test dataset (dataset=...) or meta['dataset']")
        dataset = datasets.create(meta["dataset"], root=data_root or training_data_root(meta), split="test")
    sha = meta.get("weights_sha256") or model_sha256(model)
    return EvalTarget(model, dataset, {"sha256": sha, "path": None, "meta": meta})


def _query_batch(dataset, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(start, stop)]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
    return images, labels


def evaluate(target: EvalTarget | str | os.PathLike, config: EvalConfig | None = None, *, device: str = "auto",
             state_dir: str | os.PathLike | None = None, progress: bool | str | None = False,
             data_root: str | None = None, benign_nmi: bool = True,
             probe: Sequence[float] | None = None, engine_per_query: bool = False) -> EvaluationResult:
    """Evaluate ``target`` (a checkpoint directory, or an :class:`EvalTarget` from :func:`load_target` /
    :func:`model_target`) as ``config`` says (default: the full ``rob28``); see the module docstring for the protocol.

    ``device``: where the model and the gallery live (``auto`` picks CUDA when present). ``state_dir``: resume per
    attack (module docstring). ``progress``: ``"bar"`` (or True), ``"log"`` (plain lines: one per finished attack,
    one at least every 30 s) or False (:class:`robustbench_dml.progress.Progress`). ``data_root``: the test data's
    folder for a checkpoint directory (default: the checkpoint's training one). The float settings, the gallery's kNN
    backend among them, are ``config.numerics``'s (:mod:`robustbench_dml.numerics`; every kNN backend returns the
    same neighbours, and the chunked torch search measured 7-15x faster than faiss-cpu's flat index on 2 CPU cores)
    and the result records them. ``probe``: seconds of forward+backward calls on a full query batch already measured
    (the plan's), used as the first measurement of the attacks' lower bound instead of timing again.
    ``engine_per_query``: a strong suite's result also keeps every query's value of every engine part
    (``extra["engine"]["per_query"]``, for studies of the attack budget; about parts x keys floats per query, so
    off for results that are kept).
    """
    config = config or EvalConfig()
    from robustbench_dml.runtime import rank_device, resolve_device

    dev = rank_device(resolve_device(device) if isinstance(device, str) else torch.device(device))
    with applied(config.numerics, dev) as numerics:
        try:
            result = _evaluate(target, config, dev, state_dir, progress, data_root, benign_nmi,
                               numerics["knn_backend"], probe, engine_per_query)
        finally:  # a caller's model leaves in the layout it came in
            if config.numerics.channels_last and isinstance(target, EvalTarget):
                target.model.to(memory_format=torch.contiguous_format)
    result.numerics = numerics
    return result


def _evaluate(target, config: EvalConfig, dev: torch.device, state_dir, progress, data_root, benign_nmi,
              knn_backend: str, probe: Sequence[float] | None, engine_per_query: bool = False) -> EvaluationResult:
    from robustbench_dml import metrics
    from robustbench_dml.gallery import embed
    from robustbench_dml.progress import Progress
    from robustbench_dml.runtime import versions

    suite = config.suite_obj
    rank, world = _dist_info()
    phases = _Phases()  # where the evaluation's seconds go (result.extra["timing"]["phases"])
    if not isinstance(target, EvalTarget):
        target = load_target(target, dev, data_root)
    model = target.model.to(dev)
    if config.numerics.channels_last:
        model.to(memory_format=torch.channels_last)  # the convolutions' weights (and so their outputs) in NHWC
    show = progress if rank == 0 else None
    phases.done("load")

    gallery = embed(model, target.dataset, batch_size=256, device=dev, progress=show in (True, "bar"),
                    backend=knn_backend)
    phases.done("embed")
    n = len(gallery)
    num_queries = n if config.max_queries is None else min(n, int(config.max_queries))
    benign = metrics.retrieval_metrics(gallery.embeddings, gallery.labels, ks=(1, 2), nmi=benign_nmi,
                                       seed=config.seed, normalize=False)  # the gallery is L2-normalised already
    # the collapse diagnostic (docs/protocol.md, The result file)
    benign.update(metrics.collapse_diagnostic(gallery.embeddings, gallery.labels, seed=config.seed))
    phases.done("benign")
    ranges = batch_ranges(num_queries, suite.batch_size)
    key = state_key(target.checkpoint["sha256"], suite.hash, config.seed, config.overrides, config.protocols)
    state_path = Path(state_dir) / key if state_dir is not None else None

    # benign per-query top-1 (self excluded by index), the R@1 that ARS divides by
    q_idx = torch.arange(num_queries, device=gallery.device)
    _, top = gallery.knn(gallery.embeddings[:num_queries], 1, exclude=q_idx)
    r1 = ((gallery.labels[top[:, 0]] == gallery.labels[:num_queries]).double() * 100).cpu().tolist()
    blocks = {p: {"per_query": {"R@1": r1}, "clean": {}, "success": {}} for p in config.protocols}
    phases.done("benign")
    runner = _AttackRunner(config, model, gallery, target.dataset, ranges, rank, world, engine_per_query)
    # the lower bound's unit, measured before the first attack (or taken from the plan's probe) and after the last
    bound_before = min(probe) if probe else runner.forward_backward()
    phases.done("bound")
    engine_parts: dict[str, dict] = {}
    timing: dict[str, dict] = {}
    with Progress(show, sum(map(config.runs, config.attack_ids)) * len(ranges), f"{suite.id}") as bar:
        for attack_id in config.attack_ids:
            revision = runner.revision(attack_id)
            done = _load_state(state_path, attack_id, num_queries, config.protocols, revision) if state_path else None
            if done is None:
                done = runner.all_protocols(attack_id, bar)
                if state_path is not None and rank == 0:
                    _save_state(state_path, attack_id, num_queries, done, revision)
            else:
                for _ in range(len(ranges) * config.runs(attack_id)):
                    bar.advance(f"{attack_id} (resumed)")
            bar.finished(attack_id)
            for p in config.protocols:
                blocks[p]["per_query"].update(done[p]["per_query"])
                blocks[p]["clean"].update(done[p]["clean"])
                blocks[p]["success"][attack_id] = done[p]["success"]
            if "engine" in done[config.protocols[0]]:
                engine_parts[attack_id] = done[config.protocols[0]]["engine"]
            if "timing" in done[config.protocols[0]]:
                timing[attack_id] = done[config.protocols[0]]["timing"]

    phases.done("attacks")
    bound_after = runner.forward_backward()
    phases.done("bound")
    fb = min(bound_before, bound_after)
    timed = {}
    for a, t in timing.items():
        bound = t["batch_iterations"] * fb if "batch_iterations" in t else None  # None: resumed from an older state
        timed[a] = {"wall_s": t["wall_s"], "bound_s": bound, "ratio": t["wall_s"] / bound if bound else None}
    batch_sizes = [e - s for s, e in ranges]
    for p, block in blocks.items():
        compat = p == P.ROBRANK
        block["raw"] = {k: aggregate(v, batch_sizes, compat) for k, v in block["per_query"].items()}
        block["clean"] = {k: aggregate(v, batch_sizes, compat) for k, v in block["clean"].items()}
        block["scores"] = _scores(block["raw"], block["per_query"], block["success"], config.seed)
    phases.done("scores")
    return EvaluationResult(
        checkpoint=target.checkpoint,
        suite={"id": suite.id, "version": suite.version, "hash": suite.hash, "params": suite.params,
               "overrides": config.overrides, "eligible": all(v is None for v in config.overrides.values())},
        seed=int(config.seed), device=str(dev), versions=versions(), robrank_compat=bool(config.robrank_compat),
        num_queries=num_queries, benign=dict(benign), protocols=blocks,
        extra={"world_size": world,  # processes that shared the query batches (torchrun)
               # per attack: seconds spent (all processes, both protocols' runs) and the lower bound, PGD iterations
               # x one forward+backward of the model on a query batch, the smaller of the measurements before the
               # first attack and after the last; a ratio below SUSPECT_RATIO is a measurement to distrust
               "timing": {"forward_backward_s": fb, "forward_backward_before_s": bound_before,
                          "forward_backward_after_s": bound_after, "probe": "plan" if probe else "evaluation",
                          "repeats": BOUND_REPEATS, "batch_size": suite.batch_size, "attacks": timed,
                          "phases": phases.seconds,
                          "suspect": [a for a, t in timed.items() if t["ratio"] is not None
                                      and t["ratio"] < SUSPECT_RATIO]},
               **({"engine": engine_summary(suite.engine, engine_parts, num_queries)} if suite.engine else {})},
    )


def engine_summary(engine, by_attack: Mapping[str, dict], num_queries: int) -> dict[str, Any]:
    """What a strong suite's engine did (:mod:`attacks.engine`): its parameters; per attack and scored key the mean
    over queries of each part (raw units: ``pgd`` is the published suite's number, ``final`` the reported one);
    and the gradient-free check on its subset of queries: the mean of the search's and of the gradient result on
    the same queries, how many queries the search did strictly better on; ``no_gradient``, per attack the share of
    queries whose loss had a zero or non-finite input gradient at the clean image; ``randomised``, the attacks whose
    model gave two different embeddings of the same images (:func:`attacks.engine.diagnose`); and, in
    ``masking_suspected``, the attacks whose search did better on average or with a share of dead gradients of at
    least ``NO_GRADIENT_SHARE`` (signs of gradient masking). With :func:`evaluate`'s ``engine_per_query``, also
    ``per_query``: per attack and key, every query's value of each part, and the check's values per query
    (``search``, ``gradient``: with a search, on every query, a query not searched holding the gradients' value)."""
    from attacks.engine import resistance

    parts, check, suspected = {}, {}, []
    diagnosed = {a: d["diagnostics"] for a, d in by_attack.items() if "diagnostics" in d}  # older states lack it
    no_gradient = {a: d["no_gradient"] / num_queries for a, d in diagnosed.items()}
    randomised = [a for a, d in diagnosed.items() if d["randomised"]]
    for attack_id, d in by_attack.items():
        parts[attack_id] = {k: {part: total / num_queries for part, total in sums.items()}
                            for k, sums in d["parts_sum"].items()}
        check[attack_id] = {}
        for k, pair in d["check"].items():
            search, gradient = torch.tensor(pair["search"]), torch.tensor(pair["gradient"])
            if not len(search):
                continue
            ts, tg = resistance(k, search.double()), resistance(k, gradient.double())
            check[attack_id][k] = {"queries": len(search), "search": float(search.mean()),
                                   "gradient": float(gradient.mean()), "search_better": int((ts < tg).sum())}
            if float(ts.mean()) < float(tg.mean()) and attack_id not in suspected:
                suspected.append(attack_id)
        if no_gradient.get(attack_id, 0.0) >= NO_GRADIENT_SHARE and attack_id not in suspected:
            suspected.append(attack_id)
    out = {"params": engine.params, "parts": parts, "check": check, "no_gradient": no_gradient,
           "randomised": randomised, "masking_suspected": suspected}
    per_query = {a: {"parts": d["parts"], "check": d["check"]} for a, d in by_attack.items() if "parts" in d}
    if per_query:
        out["per_query"] = per_query
    return out


#: the share of queries with a dead input gradient (:func:`attacks.engine.diagnose`) from which an attack's numbers
#: are flagged: a few queries can sit where the model is flat, a tenth cannot
NO_GRADIENT_SHARE = 0.1


#: timed calls per measurement of the attacks' lower bound (after a warm-up). The minimum is kept: noise (other
#: processes, frequency changes) can only add time, so the fastest call is the closest to the model's own cost;
#: five calls give a passing burst of load several chances to miss one, at the cost of five PGD iterations on one
#: batch, and the two measurements (before and after) bracket the whole evaluation
BOUND_REPEATS = 5
#: an attack whose time is below this share of its lower bound is reported as a suspect measurement
SUSPECT_RATIO = 0.95


class _Phases:
    """Seconds per phase of one evaluation, by name (a name met twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


class _AttackRunner:
    """Runs one attack of ``config``'s suite over this rank's query batches and merges every rank's results."""

    def __init__(self, config: EvalConfig, model, gallery, dataset, ranges, rank: int, world: int,
                 engine_per_query: bool = False):
        self.config, self.model, self.gallery, self.dataset = config, model, gallery, dataset
        self.ranges, self.rank, self.world = ranges, rank, world
        self.engine_per_query = engine_per_query

    def forward_backward(self) -> float:
        """Seconds of one forward + input-backward of the model on a full query batch (the unit of an attack's
        lower bound, :func:`attacks.pgd.iteration_seconds`): the fastest of :data:`BOUND_REPEATS` calls after a
        warm-up, on this process's first query batch, scaled to the suite's batch size."""
        from attacks.pgd import iteration_seconds

        start, stop = self.ranges[self.rank % len(self.ranges)]
        images, _ = _query_batch(self.dataset, start, stop)
        x = images.to(device=self.gallery.embeddings.device, dtype=torch.float32)
        return min(iteration_seconds(self.model, x, repeats=BOUND_REPEATS)) * self.config.suite_obj.batch_size / (
            stop - start)

    @staticmethod
    def revision(attack_id: str) -> int:
        import attacks as attack_zoo

        return attack_zoo.ATTACKS.get(attack_id).revision

    def all_protocols(self, attack_id: str, bar) -> dict[str, dict]:
        """Every measured protocol's results of ``attack_id``: one run, plus a second for an attack whose targets
        the reference's quirks change (GTM, LTM); ES's measurement quirk is read from the same run."""
        protocols = self.config.protocols
        atk, first = self.run(attack_id, protocols[0] == P.ROBRANK, bar)
        done = {protocols[0]: first}
        if self.config.runs(attack_id) == 2:
            done[P.ROBRANK] = second = self.run(attack_id, True, bar)[1]
            first["timing"] = {k: first["timing"][k] + second["timing"][k] for k in first["timing"]}  # both runs
        elif len(protocols) > 1:
            measure = atk.robrank_quirk == "measure"
            done[P.ROBRANK] = {**first, "per_query": first["per_query_robrank"]} if measure else first
        keep = ("per_query", "success", "clean", "engine", "timing")
        return {p: {k: b[k] for k in keep if k in b} for p, b in done.items()}

    def run(self, attack_id: str, robrank: bool, bar):
        import attacks as attack_zoo
        from robustbench_dml.runtime import generator

        config, suite = self.config, self.config.suite_obj
        entry = suite.attack(attack_id)
        atk = attack_zoo.create(attack_id, model=self.model, eps=suite.eps if config.eps is None else float(config.eps),
                                alpha=suite.alpha, steps=suite.steps, robrank_compat=robrank, engine=suite.engine,
                                **entry.kwargs())
        local: dict[int, Any] = {}
        for b, (start, stop) in enumerate(self.ranges):
            if b % self.world != self.rank:
                continue
            images, labels = _query_batch(self.dataset, start, stop)
            step = (f"{attack_id}{' (robrank)' if robrank and len(config.protocols) > 1 else ''} "
                    f"batch {b + 1}/{len(self.ranges)}")
            bar.begin(step)
            t0 = time.perf_counter()
            out = atk(images, labels, self.gallery, generator=generator(config.seed, attack_id, b),
                      query_index=torch.arange(start, stop))
            wall = time.perf_counter() - t0
            local[b] = {"per_query": {k: out.per_query[k].tolist() for k in atk.keys},
                        "success": out.success.tolist(), "clean": {k: out.clean[k].tolist() for k in atk.keys},
                        "per_query_robrank": None if out.per_query_robrank is None else
                        {k: out.per_query_robrank[k].tolist() for k in atk.keys},
                        "timing": [wall, out.iterations * (stop - start) / suite.batch_size]}
            if out.extra:  # a strong suite: per-part sums over the batch, the checked queries' results
                local[b]["engine"] = {
                    "parts_sum": {k: {part: math.fsum(v.tolist()) for part, v in d.items()}
                                  for k, d in out.extra["parts"].items()},
                    "check": {k: {"search": v.tolist(), "gradient": out.extra["check_gradient"][k].tolist()}
                              for k, v in out.extra["check"].items()},
                    "diagnostics": {"randomised": out.extra["diagnostics"]["randomised"],
                                    "no_gradient": int(out.extra["diagnostics"]["no_gradient"].sum())}}
                if self.engine_per_query:
                    local[b]["engine"]["parts"] = {k: {part: v.tolist() for part, v in d.items()}
                                                   for k, d in out.extra["parts"].items()}
            bar.advance(step)
        merged = _gather(local, self.world)
        order = range(len(self.ranges))
        flat = lambda part, k: [v for b in order for v in merged[b][part][k]]  # noqa: E731
        block = {"per_query": {k: flat("per_query", k) for k in atk.keys},
                 "success": [v for b in order for v in merged[b]["success"]],
                 "clean": {k: flat("clean", k) for k in atk.keys}}
        if merged and merged[0]["per_query_robrank"] is not None:
            block["per_query_robrank"] = {k: flat("per_query_robrank", k) for k in atk.keys}
        block["timing"] = {"wall_s": math.fsum(merged[b]["timing"][0] for b in order),  # every process's seconds
                           "batch_iterations": math.fsum(merged[b]["timing"][1] for b in order)}
        if merged and "engine" in merged[0]:
            engines = [merged[b]["engine"] for b in order]
            block["engine"] = {
                "parts_sum": {k: {part: math.fsum(e["parts_sum"][k][part] for e in engines) for part in d}
                              for k, d in engines[0]["parts_sum"].items()},
                "check": {k: {side: [v for e in engines for v in e["check"][k][side]]
                              for side in ("search", "gradient")} for k in engines[0]["check"]},
                "diagnostics": {"randomised": any(e["diagnostics"]["randomised"] for e in engines),
                                "no_gradient": sum(e["diagnostics"]["no_gradient"] for e in engines)}}
            if "parts" in engines[0]:
                block["engine"]["parts"] = {k: {part: [v for e in engines for v in e["parts"][k][part]] for part in d}
                                            for k, d in engines[0]["parts"].items()}
        return atk, block


def _scores(raw, per_query, success, seed) -> dict[str, Any]:
    from robustbench_dml import scoring

    out: dict[str, Any] = {}
    for name, fn in (("ERS", scoring.ers), ("ARS", scoring.ars)):
        try:
            out[name] = fn(raw)
            out[f"{name}_ci"] = list(scoring.bootstrap_ci(per_query, score=name, seed=seed))
        except ValueError as e:  # a subset of attacks, or R@1 = 0: the score is undefined
            out[name] = None
            out[f"{name}_ci"] = None
            out.setdefault("notes", []).append(f"{name}: {e}")
    out["worst_case"] = scoring.worst_case(success) if success else None
    correct = [v > 0 for v in per_query["R@1"]] if "R@1" in per_query else None
    out["worst_case_by_threat"] = scoring.worst_case_by_threat(success, correct) if success else {}
    return out


def _load_state(path: Path, attack_id: str, num_queries: int, measured: Sequence[str], revision: int) -> dict | None:
    f = path / _attack_file(attack_id)
    if not f.is_file():
        return None
    try:
        d = json.loads(read_bounded(f, "state"))
    except (OSError, ValueError, UserError):
        return None  # a damaged state file is recomputed
    if d.get("attack") != attack_id or d.get("num_queries") != num_queries or \
            not isinstance(d.get("protocols"), dict) or sorted(d["protocols"]) != sorted(measured) or \
            d.get("revision", 1) != revision:  # written by an earlier revision of the attack: recomputed
        return None
    return d["protocols"]


def _save_state(path: Path, attack_id: str, num_queries: int, done: dict, revision: int) -> None:
    atomic_write_text(path / _attack_file(attack_id), json.dumps(
        {"attack": attack_id, "revision": revision, "num_queries": num_queries, "protocols": done}))
