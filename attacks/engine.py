"""The strong evaluation engine: every ranking attack run several ways per query, the best point kept.

What AutoAttack (Croce and Hein, ICML 2020) did for classification, applied to the ranking attacks: the published
suites (RobRank's rob28 / rob224) run sign-PGD with a constant step, no restart, and score the *last* iterate,
which overestimates robustness whenever that iterate is not the attack's best. An :class:`Engine` runs, per query
and with the attack's own selections (the same targets as the published suite draws):

1. the published constant-step PGD (``with_pgd``), so the result is at least as strong as the published suite's;
2. ``restarts + targets`` runs of APGD's schedule (:func:`attacks.pgd.apgd`, ``steps`` gradient evaluations each):
   the first from the clean image; then ``targets`` targeted runs from the clean image, each pursuing the same
   scored goal through the attack's next alternative target (:meth:`RankingAttack.retarget`: the next nearest
   rival classes for GTM and LTM, the next neighbours for GTT; an attack without alternatives, CA, QA, TMA and
   ES, runs a random restart in that slot); then the random restarts, from uniform points of the ball;
3. in every APGD run, the goal the attack is scored on is measured at every evaluated iterate (the rank
   percentile, the R@1 outcome, the cosine, the shift: :meth:`RankingAttack.measure` on the embedding the step
   computed anyway, so no extra forward pass) and the best iterate per scored key is kept ("best" = lowest ERS
   term, :func:`robustbench_dml.scoring.term`; on ties the later iterate);
4. with ``search_steps``, a random search (:func:`attacks.square.random_search`, Square Attack's schedule from
   ``search_p_init``) on every query, every proposal measured likewise: an attack of its own whose points join
   the worst case (as Square does in AutoAttack);
5. per query and per scored key, the better of the PGD result and the best point of the runs, re-measured from a
   fresh forward pass. ES's two keys may so come from two different points: each is that measure's worst case.

A query counts as broken (``success``) when the PGD result or a reported point breaks it.

Pruning (:attr:`Engine.prune`, on): after the first APGD run, each run and the search attack only the queries whose
worst case so far is above the floor of some scored key (an ERS term of 0: CA+/QA+ at the first place, a broken
ES:R, LTM, GTM or GTT outcome), as AutoAttack runs each attack only on the points still standing. Nothing can beat
the floor and every random draw is made for the whole batch, so the results and every ladder step are those of the
unpruned run; only ``restarts`` (the gradient runs without the PGD result) may keep the value a pruned query had,
and a query not searched reports the gradients' value as the search's. Budgets count the nominal cost.

``parts`` records how much each step contributed, per key and query, in the key's raw units: ``pgd`` (the
published attack), ``apgd`` (APGD's first run, last iterate), ``best_iterate`` (its best iterate), ``restarts``
(the best over all gradient runs) and ``final`` (the reported value); and the worst case so far after each run,
named by the gradient evaluations per image spent up to it (:meth:`Engine.ladder`: ``g32``, ``g132``, ...,
``g1032+s5000`` after the search), from which one run at the largest budget gives the whole budget curve.

The gradient-free check of an engine without a search (``check_queries`` > 0): the same random search on the
first ``check_queries`` images of each batch for ``check_steps`` steps (window fraction from ``check_p_init``:
version 1's 0.05, version 2's Square value 0.8); ``check`` holds the best
measured keys it found and ``check_gradient`` the gradient result on those images (with a search: the search's
and the gradient runs' results on every image). Where the search does better, the gradients are suspect
(gradient masking); so are they where :func:`diagnose` finds the loss's input gradient dead, and a model whose
embeddings differ between two forward passes is randomised (``eot`` averages each step's loss over forwards).

Cost in gradient evaluations per image: ``steps_pgd + (restarts + targets) x steps x eot`` (rankaa28 versions 2
and 3: 32 + 2 x 100 = 232, 7.25 times rob28's 32; version 1: 32 + 2 x 24 = 80), plus one forward per kept point,
``search_steps`` forwards per standing image (version 3: 5,000) and the check's forwards for the few checked
images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from attacks.pgd import apgd, box, uniform_start
from attacks.square import random_search
from robustbench_dml.errors import UserError

if TYPE_CHECKING:
    from attacks.base import RankingAttack

#: the engine's schedules and the :func:`attacks.pgd.apgd` variant each runs
SCHEDULES = {"apgd": "v1", "apgd-paper": "paper"}
#: the contributions ``parts`` records, in the order they are added
PARTS = ("pgd", "apgd", "best_iterate", "restarts", "final")
#: the values at which the later engine fields leave a suite's hash unchanged (:attr:`Engine.params`)
_NEUTRAL = {"targets": 0, "search_steps": 0, "eot": 1, "prune": True, "check_p_init": 0.05}


@dataclass(frozen=True)
class Engine:
    """How a strong suite runs each attack (module docstring). ``schedule``: ``"apgd"``, APGD as the strong suites
    of version 1 run it (:func:`attacks.pgd.apgd`'s ``variant="v1"``: the reference code's integer checkpoints,
    which collapse at 24 iterations, and a halving condition that ignores the previous checkpoint's halving), kept
    so that their results reproduce; ``"apgd-paper"``, Croce and Hein's schedule."""

    schedule: str = "apgd"
    steps: int = 24
    restarts: int = 2
    with_pgd: bool = True
    check_queries: int = 8
    check_steps: int = 200
    #: the check's initial window fraction (version 1: 0.05; Square Attack's own value is 0.8)
    check_p_init: float = 0.05
    #: targeted APGD runs, after the first run and before the random restarts (as AutoAttack runs APGD-T after
    #: APGD), each ``steps`` long from the clean image against the attack's ``j``-th alternative target
    #: (:meth:`attacks.base.RankingAttack.retarget`); an attack without one runs a restart from a random point
    #: instead, so every attack spends the same budget
    targets: int = 0
    #: random-search steps on every query (:func:`attacks.square.random_search`, ``search_p_init``), after the
    #: gradient runs; its points join each query's worst case
    search_steps: int = 0
    search_p_init: float = 0.8
    #: forward passes whose losses are averaged at each APGD step (expectation over transformation, for
    #: randomised defenses); each costs a forward and a backward
    eot: int = 1
    #: after the first APGD run, attack only the queries whose worst case so far is above the floor of every
    #: scored key (an ERS term of 0: nothing can do better there), as AutoAttack attacks only the points still
    #: standing; the reported results are the same (:func:`run_engine`), the cost falls by the share pruned.
    #: False only to check that claim
    prune: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"engine schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        for name, low in (("steps", 1), ("restarts", 1), ("check_queries", 0), ("check_steps", 0), ("targets", 0),
                          ("search_steps", 0), ("eot", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < low:
                raise UserError(f"engine {name} must be an integer >= {low} (got {v})")
        if not isinstance(self.prune, bool):
            raise UserError(f"engine prune must be true or false (got {self.prune!r})")
        for name in ("search_p_init", "check_p_init"):
            if not 0 < getattr(self, name) <= 1:
                raise UserError(f"engine {name} must be in (0, 1] (got {getattr(self, name)})")

    @property
    def params(self) -> dict[str, Any]:
        """The engine's part of a suite's hash: the fields a version 1 engine has, plus each later field that is
        not at its neutral value (so version 1 suites keep their hashes)."""
        out = asdict(self)
        for name, neutral in _NEUTRAL.items():
            if out[name] == neutral:
                del out[name]
        if not self.search_steps:
            del out["search_p_init"]
        return out

    @property
    def gradients(self) -> int:
        """Gradient evaluations per image and attack, the unit of the engine's budget: the published PGD's steps
        come from the suite (:meth:`ladder` takes them); this counts the APGD runs (``eot`` forwards each step)."""
        return (self.restarts + self.targets) * self.steps * self.eot

    def ladder(self, pgd_steps: int) -> list[str]:
        """The names of the cumulative ``parts`` a run records, in order: ``g<n>`` after each gradient run (``n``
        gradient evaluations per image so far, the published PGD's ``pgd_steps`` first when ``with_pgd``) and
        ``g<n>+s<m>`` after a random search of ``m`` forward queries."""
        n = pgd_steps if self.with_pgd else 0
        out = [f"g{n}"] if self.with_pgd else []
        for _ in range(self.restarts + self.targets):
            n += self.steps * self.eot
            out.append(f"g{n}")
        if self.search_steps:
            out.append(f"g{n}+s{self.search_steps}")
        return out

    def run(self, attack: RankingAttack, x0: torch.Tensor, state: dict[str, torch.Tensor], clean, gallery,
            generator: torch.Generator):
        """Attack ``x0`` with ``attack`` (whose engine this is) under this budget: :func:`run_engine`."""
        return run_engine(attack, x0, state, clean, gallery, generator)


def resistance(key: str, values: torch.Tensor) -> torch.Tensor:
    """The ERS term of raw per-query values (lower: the attacker did better)."""
    from robustbench_dml import scoring

    return scoring.term({key: values}, key, "ERS")


class _Best:
    """Per scored key, the best point seen so far per query: its raw value, its term and the image."""

    def __init__(self, keys: list[str], x: torch.Tensor):
        self.keys = keys
        self.term = {k: torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device) for k in keys}
        self.raw = {k: torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device) for k in keys}
        self.x = {k: x.detach().clone() for k in keys}
        self.last: dict[str, torch.Tensor] = {}

    def update(self, x: torch.Tensor, measured: dict[str, torch.Tensor]) -> None:
        """Keep the iterate ``x`` where it is at least as good as the best so far (ties: the later iterate)."""
        for k in self.keys:
            raw = measured[k].detach().double()
            term = resistance(k, raw)
            better = term <= self.term[k]
            self.term[k] = torch.where(better, term, self.term[k])
            self.raw[k] = torch.where(better, raw, self.raw[k])
            self.x[k][better] = x.detach()[better]
            self.last[k] = raw

    def place(self, part: _Best, rows: torch.Tensor) -> None:
        """Take the ``rows`` (indices, in order) from ``part``, the best points of one row pass
        (:meth:`RankingAttack.passes`); ``last`` holds the last measured values of the rows placed (NaN elsewhere)."""
        for k in self.keys:
            self.term[k][rows], self.raw[k][rows], self.x[k][rows] = part.term[k], part.raw[k], part.x[k]
            if k not in self.last:
                self.last[k] = torch.full_like(self.raw[k], float("nan"))
            self.last[k][rows] = part.last[k]

    def merge(self, other: _Best) -> None:
        """Keep ``other``'s point where it is strictly better (an earlier run wins ties)."""
        for k in self.keys:
            better = other.term[k] < self.term[k]
            self.term[k] = torch.where(better, other.term[k], self.term[k])
            self.raw[k] = torch.where(better, other.raw[k], self.raw[k])
            self.x[k][better] = other.x[k][better]


def scored_keys(attack: RankingAttack) -> list[str]:
    """The attack's keys that a score reads (GTT's ``GTT:ID@1`` is informative only)."""
    from robustbench_dml import scoring

    return [k for k in attack.keys if k in scoring.ERS_KEYS]


def _active_passes(attack: RankingAttack, state, gallery, active: torch.Tensor | None, *, fixed: bool = True,
                   every: bool = False):
    """The batch's row passes (:meth:`RankingAttack.passes`) restricted to the ``active`` rows (None: all):
    (the pass's first row, its active mask, the global indices of its active rows, their state, their
    :meth:`RankingAttack.prepare` data when ``fixed``). A pass without an active row is left out unless ``every``."""
    for s, e, sub, _ in attack.passes(state, gallery, fixed=False):
        act = torch.ones(e - s, dtype=torch.bool) if active is None else active[s:e].cpu()
        if act.any() or every:
            rows = act.nonzero().squeeze(1)
            sub_act = {k: v[rows.to(v.device)] for k, v in sub.items()}
            prepared = attack.prepare(sub_act, gallery) if fixed and len(rows) else None
            yield s, act, rows + s, sub_act, prepared


def _apgd_run(attack: RankingAttack, x0: torch.Tensor, start: torch.Tensor, state, gallery, keys,
              target: dict | None = None, active: torch.Tensor | None = None) -> _Best:
    """One APGD run from ``start`` on the ``active`` rows (None: all; the others keep an infinite term, so a
    merge never takes them); the goal is measured on ``state``, the loss on ``target`` (a retargeted state)
    when given."""
    eot = attack.engine.eot
    best = _Best(keys, start)
    loss_state = state if target is None else target
    for (_, _, rows, sub, _), (_, _, _, lsub, fixed) in zip(
            _active_passes(attack, state, gallery, active, fixed=False), _active_passes(attack, loss_state, gallery, active)):
        rows = rows.to(x0.device)
        part = _Best(keys, start[rows])

        def objective(x: torch.Tensor, t: int, sub=sub, lsub=lsub, fixed=fixed, part=part) -> torch.Tensor:
            z = attack.embed(x)
            with torch.no_grad():
                part.update(x, attack.measure(z.detach(), sub, gallery, clean=False))
            losses = attack.loss(z, lsub, fixed, gallery, t)
            for _ in range(eot - 1):  # expectation over transformation: a fresh forward each
                losses = losses + attack.loss(attack.embed(x), lsub, fixed, gallery, t)
            return losses / eot  # exact at eot = 1

        apgd(objective, x0[rows], eps=attack.eps, steps=attack.engine.steps, start=start[rows],
             variant=SCHEDULES[attack.engine.schedule])
        best.place(part, rows)
    return best


@torch.no_grad()
def _search_run(attack: RankingAttack, x0: torch.Tensor, state, gallery, keys, generator, *, queries: int,
                steps: int, p_init: float, active: torch.Tensor | None = None) -> _Best:
    """The random search on the first ``queries`` images (of those, the ``active`` ones), every proposal measured
    (as APGD's iterates are). Its draws do not depend on ``active`` (:func:`attacks.square.random_search`); with no
    active query it draws nothing (the search is the engine's last use of the batch's generator)."""
    best = _Best(keys, x0[:queries])
    if active is not None and not active[:queries].any():
        return best
    sub_state = {k: v[:queries] for k, v in state.items()}
    for s, act, rows, sub, fixed in _active_passes(attack, sub_state, gallery, active, every=True):
        rows = rows.to(x0.device)
        part = _Best(keys, x0[rows])

        def objective(x: torch.Tensor, sub=sub, fixed=fixed, part=part) -> torch.Tensor:
            z = attack.embed(x)
            part.update(x, attack.measure(z, sub, gallery, clean=False))
            return attack.loss(z, sub, fixed, gallery, 1)

        random_search(objective, x0[s:s + len(act)], eps=attack.eps, steps=steps, generator=generator, p_init=p_init,
                      active=act)
        if len(rows):
            best.place(part, rows)
    return best


#: embeddings of the same images that differ by more than this (L2-normalised, max abs) mark a randomised model
RANDOMISED_TOL = 1e-3


def diagnose(attack: RankingAttack, x0: torch.Tensor, state, gallery) -> dict[str, Any]:
    """Signs of gradient masking that need no attack, on the clean batch: ``randomised`` (two forward passes of the
    same images give different embeddings: a randomised defense, whose gradients need expectation over
    transformation, :attr:`Engine.eot`) and ``no_gradient`` (B,) bool (the attack's loss is not zero but its input
    gradient is zero or not finite: shattered or saturated gradients, which no gradient attack can follow)."""
    with torch.no_grad():
        randomised = bool((attack.embed(x0) - attack.embed(x0)).abs().max() > RANDOMISED_TOL)
    flags = []
    for s, e, sub, fixed in attack.passes(state, gallery):
        x = x0[s:e].detach().clone().requires_grad_(True)
        losses = attack.loss(attack.embed(x), sub, fixed, gallery, 0)
        (grad,) = torch.autograd.grad(losses.sum(), x)
        g = grad.detach().flatten(1)
        dead = (g == 0).all(dim=1) | ~torch.isfinite(g).all(dim=1)
        flags.append(dead & (losses.detach() != 0))
    return {"randomised": randomised, "no_gradient": torch.cat(flags)}


def run_engine(attack: RankingAttack, x0: torch.Tensor, state: dict[str, torch.Tensor], clean, gallery,
               generator: torch.Generator):
    """Attack ``x0`` as the module docstring says; returns (x_adv, adv, success, iterations, extra) with ``extra``
    = {"parts": {key: {part: (B,)}}, "check": {key: (q,)}, "check_gradient": {key: (q,)}, "diagnostics": ...}.
    ``state`` comes from ``attack.select`` (the published suite's targets)."""
    eng = attack.engine
    keys = scored_keys(attack)
    b = x0.shape[0]
    parts: dict[str, dict[str, torch.Tensor]] = {k: {} for k in keys}
    ladder = iter(eng.ladder(attack.steps))
    iterations = 0
    success_pgd = torch.zeros(b, dtype=torch.bool, device=x0.device)
    adv_pgd = x_pgd = None
    diagnostics = diagnose(attack, x0, state, gallery)
    if eng.with_pgd:
        x_pgd, z_last, iterations = attack._run_pgd(x0, state, gallery)
        with torch.no_grad():
            z = attack.embed(x_pgd)
            adv_pgd = attack.measure(z, state, gallery, clean=False)
            success_pgd = attack.succeeded(clean, adv_pgd, {**state, "z_last": z_last, "z_adv": z}, gallery)
        step = next(ladder)
        for k in keys:
            parts[k]["pgd"] = parts[k][step] = adv_pgd[k].double()
    lo, hi = box(x0, attack.eps)
    overall: _Best | None = None

    def record(run: _Best) -> None:
        """Merge ``run`` into the best so far and record the cumulative worst case (the PGD result included)."""
        nonlocal overall
        if overall is None:
            overall = run
        else:
            overall.merge(run)
        step = next(ladder)
        for k in keys:
            value = overall.raw[k]
            if adv_pgd is not None:
                value = torch.where(resistance(k, value) < resistance(k, parts[k]["pgd"]), value, parts[k]["pgd"])
            parts[k][step] = value.clone()

    def standing() -> torch.Tensor | None:
        """The queries whose worst case so far is above the floor of some scored key (None: do not prune)."""
        if not eng.prune:
            return None
        step = f"g{iterations}"
        return torch.stack([resistance(k, parts[k][step]) > 0 for k in keys]).any(dim=0)

    active = None  # the first APGD run attacks every query, so its own parts are defined everywhere
    for r in range(eng.restarts + eng.targets):
        target = attack.retarget(state, gallery, r) if 1 <= r <= eng.targets else None
        start = x0 if r == 0 or target is not None else uniform_start(x0, attack.eps, lo, hi, generator)
        run = _apgd_run(attack, x0, start, state, gallery, keys, target, active)
        iterations += eng.steps * eng.eot
        if r == 0:
            for k in keys:
                parts[k]["apgd"], parts[k]["best_iterate"] = run.last[k].clone(), run.raw[k].clone()
        record(run)
        active = standing()
    for k in keys:
        parts[k]["restarts"] = overall.raw[k].clone()
    check, check_gradient = {}, {}
    if eng.search_steps:
        gradient_only = {k: parts[k][f"g{iterations}"] for k in keys}
        found = _search_run(attack, x0, state, gallery, keys, generator, queries=b, steps=eng.search_steps,
                            p_init=eng.search_p_init, active=active)
        searched = torch.ones(b, dtype=torch.bool, device=x0.device) if active is None else active.to(x0.device)
        # a query at the floor is not searched: nothing beats it, so the search's value there is the gradients'
        check = {k: torch.where(searched, found.raw[k], gradient_only[k]) for k in keys}
        check_gradient = gradient_only
        record(found)
    with torch.no_grad():
        chosen: dict[str, torch.Tensor] = {}
        x_keep: dict[str, torch.Tensor] = {}
        for k in keys:
            value = attack.measure(attack.embed(overall.x[k]), state, gallery, clean=False)[k].double()
            x = overall.x[k]
            if adv_pgd is not None:
                take = resistance(k, value) < resistance(k, parts[k]["pgd"])
                value = torch.where(take, value, parts[k]["pgd"])
                x = torch.where(take.view((b,) + (1,) * (x0.dim() - 1)), x, x_pgd)
            chosen[k], x_keep[k] = value, x
            parts[k]["final"] = value
        x_adv = x_keep[keys[0]]
        z_adv = attack.embed(x_adv)
        adv = attack.measure(z_adv, state, gallery, clean=False)
        adv.update({k: v.to(adv[k].dtype) for k, v in chosen.items()})
        success = success_pgd
        for k in keys:  # broken at any kept point (ES keeps one per result)
            z = z_adv if k == keys[0] else attack.embed(x_keep[k])
            success = success | attack.succeeded(clean, adv, {**state, "z_last": z, "z_adv": z}, gallery)
    if eng.check_queries > 0 and not eng.search_steps:
        q = min(eng.check_queries, b)
        found = _search_run(attack, x0, state, gallery, keys, generator, queries=q, steps=eng.check_steps,
                            p_init=eng.check_p_init)
        check = {k: v.double() for k, v in found.raw.items()}
        check_gradient = {k: chosen[k][:q] for k in keys}
    return x_adv, adv, success, iterations, {"parts": parts, "check": check, "check_gradient": check_gradient,
                                              "diagnostics": diagnostics}
