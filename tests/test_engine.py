"""The strong engine (APGD schedule, best iterate, restarts, random-search check) and the rankaa suites."""

from __future__ import annotations

import pytest
import torch
from test_attacks import Toy
from torch import nn

import attacks
from attacks.engine import PARTS, Engine, resistance, scored_keys
from attacks.pgd import apgd, apgd_checkpoints, pgd
from attacks.square import random_search, window_fraction
from attacks.suites import ROB28, Suite, get_suite, list_suites
from robustbench_dml.errors import UserError

PARAMS = {"CA+": {"W": 1}, "CA-": {"W": 1}, "QA+": {"M": 1}, "QA-": {"M": 1}}
ENGINE = Engine(steps=8, restarts=2, check_queries=4, check_steps=30)


def test_checkpoints_follow_the_papers_recursion_at_the_suites_budgets():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N), below N
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert apgd_checkpoints(100) == [round(100 * v) for v in p[1:]] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(24) == [6, 10, 14, 17, 20, 21, 23]  # 5.28, 9.84, 13.68, 16.8, 19.2, 20.88, 22.32
    assert apgd_checkpoints(1) == [] and apgd_checkpoints(8) == [2, 4, 5, 6, 7]
    # the strong suites of version 1: the reference code's integer rule, the paper's at N = 100 only
    assert apgd_checkpoints(100, "v1") == apgd_checkpoints(100)
    assert apgd_checkpoints(24, "v1") == [5, 9, 12] + list(range(14, 24))
    assert Engine().schedule == "apgd" and get_suite("rankaa28.v1").engine.steps == 24  # v1's N, v1's rule
    assert (get_suite("rankaa28").engine.schedule, get_suite("rankaa28").engine.steps) == ("apgd-paper", 100)


def _scripted(values):
    """An objective whose per-image value at iteration t is ``values[t]`` whatever the image (zero gradient)."""
    return lambda x, t: x.flatten(1).sum(dim=1) * 0.0 + values[t]


@pytest.mark.parametrize("variant", ["paper", "v1"])
def test_apgd_halves_after_a_halving_only_when_its_moves_stalled(variant):
    # no improvement up to the first checkpoint c1 (condition 1 halves there); then every move but the first
    # improves on the one before without beating the best (condition 1 holds back at c2); then new bests. The
    # paper halves at c2 only if the step was not halved at c1: once in all. v1 ignored that: twice.
    steps = 24
    c1, c2 = apgd_checkpoints(steps, variant)[:2]
    values = [1.0] + [2.0] * c1 + [5.0 - 0.5 * i for i in range(c2 - c1)]
    values += [0.9 - 0.01 * i for i in range(steps - len(values))]
    res = apgd(_scripted(values), torch.rand(3, 4), eps=0.1, steps=steps, variant=variant)
    assert res.halvings.tolist() == [1 if variant == "paper" else 2] * 3
    assert res.loss_best.tolist() == pytest.approx([min(values)] * 3)


def test_apgd_reaches_the_corner_of_a_linear_objective():
    g = torch.Generator().manual_seed(0)
    x0, w = torch.rand(5, 12, generator=g), torch.randn(5, 12, generator=g)
    res = apgd(lambda x, t: (w * x).sum(dim=1), x0, eps=0.1, steps=10)
    corner = torch.clamp(x0 - 0.1 * w.sign(), 0, 1)  # the minimiser over the ball intersected with the box
    assert torch.allclose(res.x_best, corner)
    assert torch.allclose(res.loss_best, (w * corner).sum(dim=1).double())


def test_apgd_halves_its_step_and_beats_constant_pgd_on_a_quadratic():
    # the minimiser c lies inside the ball: a constant step oscillates around it, APGD's halving step closes in
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 20, generator=g) * 0.5 + 0.25
    c = x0 + (torch.rand(6, 20, generator=g) - 0.5) * 0.1
    f = lambda x, t=0: ((x - c) ** 2).sum(dim=1)
    res = apgd(f, x0, eps=0.08, steps=40)
    assert (res.halvings > 0).all()
    last = pgd(lambda x: f(x).sum(), x0, eps=0.08, alpha=0.02, steps=40).x_adv
    assert (f(res.x_best) < f(last)).all()
    assert ((res.x_best - x0).abs() <= 0.08 + 1e-7).all() and (res.x_best >= 0).all() and (res.x_best <= 1).all()
    assert torch.allclose(res.loss_best, f(res.x_best).double())


def test_random_search_stays_in_the_ball_improves_and_is_reproducible():
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 1, 6, 6, generator=g)
    w = torch.randn(3, 1, 6, 6, generator=g)
    f = lambda x: (w * x).flatten(1).sum(dim=1)
    x, best = random_search(f, x0, eps=0.05, steps=60, generator=torch.Generator().manual_seed(3))
    again, _ = random_search(f, x0, eps=0.05, steps=60, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, again)
    assert ((x - x0).abs() <= 0.05 + 1e-7).all() and (x >= 0).all() and (x <= 1).all()
    assert torch.allclose(best, f(x).double())
    assert (best < f(x0).double()).all()
    assert window_fraction(0, 100, 0.05) == 0.05 and window_fraction(99, 100, 0.05) == 0.05 / 2 ** 9


@pytest.mark.parametrize("aid", attacks.list_attacks())
def test_engine_is_at_least_as_strong_as_the_published_attack_on_every_query(aid):
    toy = Toy(n=1000, seed=3)
    kw = dict(eps=0.1, alpha=0.01, steps=8, b=24, **PARAMS.get(aid, {}))
    base = toy.attack(aid, **kw)
    strong = toy.attack(aid, engine=ENGINE, **kw)
    for k in scored_keys(strong_attack := attacks.create(aid, model=toy.model, eps=0.1, alpha=0.01, steps=8,
                                                         engine=ENGINE, **PARAMS.get(aid, {}))):
        assert (resistance(k, strong.per_query[k]) <= resistance(k, base.per_query[k])).all(), k
        parts = strong.extra["parts"][k]
        ladder = ENGINE.ladder(8)
        assert ladder == ["g8", "g16", "g24"] and set(parts) == set(PARTS) | set(ladder)
        assert torch.equal(parts["pgd"], base.per_query[k])  # the same PGD run, same targets
        assert torch.equal(parts["g8"], parts["pgd"])
        for before, after in zip(ladder, ladder[1:]):  # a worst case so far never gets weaker
            assert (resistance(k, parts[after]) <= resistance(k, parts[before])).all()
        assert torch.equal(parts["final"], strong.per_query[k])
        assert (resistance(k, parts["restarts"]) <= resistance(k, parts["best_iterate"])).all()
        assert (resistance(k, parts["best_iterate"]) <= resistance(k, parts["apgd"])).all()
        assert strong.extra["check"][k].shape == (4,)
    assert not (base.success & ~strong.success).any()  # a query the published attack breaks stays broken
    assert strong.iterations == 8 + 2 * 8 and strong_attack.engine is ENGINE
    for key, sel in base.selection.items():
        assert torch.equal(sel, strong.selection[key])


def test_engine_results_are_reproducible_and_batch_independent():
    toy = Toy(n=1000, seed=4)
    a = toy.attack("QA+", eps=0.1, alpha=0.01, steps=8, b=16, M=1, engine=ENGINE)
    b = toy.attack("QA+", eps=0.1, alpha=0.01, steps=8, b=16, M=1, engine=ENGINE)
    assert torch.equal(a.per_query["QA+"], b.per_query["QA+"]) and torch.equal(a.x_adv, b.x_adv)


class Quantised(nn.Module):
    """A model whose input gradient is zero almost everywhere (rounding to 4 levels): gradient masking."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(8, 8)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(8, 8, generator=g))
            self.lin.bias.copy_(torch.randn(8, generator=g) * 0.1)

    def forward(self, x):
        return self.lin(torch.round(x.flatten(1) * 4) / 4)


def test_the_random_search_flags_a_masked_gradient(tmp_path, monkeypatch):
    from robustbench_dml.datasets import TensorDataset, info
    from robustbench_dml.evaluation import EvalConfig, evaluate, model_target

    g = torch.Generator().manual_seed(5)
    images = torch.randint(256, (300, 1, 2, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(5, (300,), generator=g).numpy()
    suite = Suite(id="tiny_strong", version=1, eps=0.2, alpha=0.02, steps=4, batch_size=16,
                  attacks=ROB28.attacks[4:6], engine=Engine(steps=4, restarts=1, check_queries=8, check_steps=40))
    target = model_target(Quantised(), {"dataset": "digits"}, TensorDataset(images, labels, info("digits")))
    result = evaluate(target, EvalConfig(suite, max_queries=32), device="cpu", benign_nmi=False, state_dir=tmp_path)
    engine = result.extra["engine"]
    # gradient steps cannot move a rounded input: the published PGD and APGD change nothing, the search does
    assert engine["parts"]["TMA"]["TMA"]["final"] == pytest.approx(engine["parts"]["TMA"]["TMA"]["pgd"])
    assert engine["check"]["TMA"]["TMA"]["search_better"] > 0
    assert "TMA" in engine["masking_suspected"] and "ES" in engine["masking_suspected"]
    assert list(result.protocols) == ["corrected"] and result.extra["engine"]["params"]["check_steps"] == 40
    # resumed from its state files, the engine's parts and check come back with the results

    def boom(*a, **k):
        raise AssertionError("a finished attack ran again")

    monkeypatch.setattr(attacks.RankingAttack, "__call__", boom)
    again = evaluate(target, EvalConfig(suite, max_queries=32), device="cpu", benign_nmi=False, state_dir=tmp_path)
    assert again.extra["engine"] == engine and again.raw == result.raw


def test_rankaa_suites_are_registered_frozen_and_share_the_published_targets():
    assert {"rankaa28", "rankaa224"} <= set(list_suites("rankaa*"))
    for strong, published in (("rankaa28", "rob28"), ("rankaa224", "rob224")):
        v1, v2, s, p = (get_suite(f"{strong}.v1"), get_suite(f"{strong}.v2"), get_suite(strong),
                        get_suite(published))
        for x in (v1, v2, s):
            assert (x.eps, x.alpha, x.steps, x.batch_size, x.attacks) == (p.eps, p.alpha, p.steps, p.batch_size,
                                                                          p.attacks)
            assert x.base_id == published and x.protocols == ("corrected",)
        assert v1.engine == Engine() and v1.params["engine"] == {
            "schedule": "apgd", "steps": 24, "restarts": 2, "with_pgd": True, "check_queries": 8, "check_steps": 200}
        assert v2.params["engine"] == {"schedule": "apgd-paper", "steps": 100, "restarts": 1, "targets": 1,
                                       "with_pgd": True, "check_queries": 8, "check_steps": 1000, "check_p_init": 0.8}
        assert s.params["engine"] == {"schedule": "apgd-paper", "steps": 100, "restarts": 1, "targets": 1,
                                      "with_pgd": True, "check_queries": 0, "check_steps": 0, "search_steps": 5000,
                                      "search_p_init": 0.8}
        assert "engine" not in p.params
        assert 2.5 < v1.iterations / p.iterations < 3.0
        # version 2: 33 + 2 x 100 + 1 + 2/3 + 2 model passes + 8 x 1000 / 3 forwards over the batch
        assert v2.iterations == pytest.approx(33 + 200 + 1 + 2 / 3 + 2 + 8 * 1000 / 3 / p.batch_size)
        # version 3: the same gradient work + 5,000 forwards (a third of a pass each) per query
        assert s.iterations == pytest.approx(33 + 200 + 1 + 2 / 3 + 2 + 5000 / 3)


def test_engine_and_robrank_compat_exclude_each_other():
    from robustbench_dml.evaluation import EvalConfig

    with pytest.raises(UserError, match="corrected protocol only"):
        EvalConfig("rankaa28", robrank_compat=True)
    with pytest.raises(UserError, match="corrected protocol only"):
        attacks.create("TMA", model=nn.Linear(2, 2), eps=0.1, alpha=0.1, steps=1, robrank_compat=True, engine=ENGINE)
    with pytest.raises(UserError, match="restarts"):
        Engine(restarts=0)


# ------------------------------------------------------------------------------------- the budget of rankaa28plus


def _knn_brute(toy: Toy, b: int, keep) -> torch.Tensor:
    """Per query, the gallery indices that ``keep(query, item)`` admits, nearest first (a full sort)."""
    z0 = toy.gallery.embeddings[:b]
    d = torch.cdist(z0.double(), toy.gallery.embeddings.double())
    out = []
    for i in range(b):
        order = [int(j) for j in torch.argsort(d[i]) if j != i and keep(i, int(j))]
        out.append(order)
    return out


def _state(toy: Toy, aid: str, b: int = 6):
    atk = attacks.create(aid, model=toy.model, eps=0.1, alpha=0.01, steps=2)
    z0 = toy.gallery.embeddings[:b]
    state = atk.select(z0, toy.labels[:b], torch.arange(b), toy.gallery, torch.Generator().manual_seed(0))
    state.update(z0=z0, labels=toy.labels[:b], self_idx=torch.arange(b))
    return atk, state


@pytest.mark.parametrize("j", [1, 2, 5])
def test_alternative_targets_are_the_next_rivals_of_a_full_sort(j):
    toy = Toy(n=300, seed=6)
    atk, state = _state(toy, "GTM")
    alt = atk.retarget(state, toy.gallery, j)["sel_target"]
    pred = state["predicted"]
    expect = _knn_brute(toy, 6, lambda i, x: int(toy.labels[x]) != int(pred[i]))
    assert alt.tolist() == [e[j] for e in expect] and state["sel_target"].tolist() == [e[0] for e in expect]
    atk, state = _state(toy, "LTM")
    expect = _knn_brute(toy, 6, lambda i, x: int(toy.labels[x]) != int(toy.labels[i]))
    assert atk.retarget(state, toy.gallery, j)["alt_negative"].tolist() == [e[j - 1] for e in expect]
    atk, state = _state(toy, "GTT")
    near = _knn_brute(toy, 6, lambda i, x: True)
    assert atk.retarget(state, toy.gallery, j)["alt_rivals"].tolist() == [e[j:j + 4] for e in near]
    assert state["sel_top1"].tolist() == [e[0] for e in near]
    for aid in ("CA+", "CA-", "QA+", "QA-", "TMA", "ES"):  # no natural alternative: a random restart instead
        atk, state = _state(toy, aid)
        assert atk.retarget(state, toy.gallery, j) is None


@pytest.mark.parametrize("aid", ["GTM", "LTM", "GTT", "QA+"])
def test_targeted_runs_only_add_to_the_worst_case(aid):
    # the same clean run and the same random restart (the generator's first draw), plus a targeted run in between:
    # a superset of the points, so no query may get weaker, and the scored goal keeps the published selection
    toy = Toy(n=1000, seed=7)
    kw = dict(eps=0.1, alpha=0.01, steps=4, b=16, **PARAMS.get(aid, {}))
    plain = toy.attack(aid, engine=Engine(steps=6, restarts=2, check_queries=0), **kw)
    more = toy.attack(aid, engine=Engine(steps=6, restarts=2, targets=2, check_queries=0), **kw)
    for k in plain.per_query:
        if k in more.extra["parts"]:
            assert (resistance(k, more.per_query[k]) <= resistance(k, plain.per_query[k]) + 1e-12).all()
            assert list(more.extra["parts"][k]) == ["pgd", "g4", "apgd", "best_iterate", "g10", "g16", "g22", "g28",
                                                    "restarts", "final"]
    assert more.iterations == 4 + 4 * 6
    for key, sel in plain.selection.items():
        assert torch.equal(sel, more.selection[key])


@pytest.mark.parametrize("aid", attacks.list_attacks())
def test_the_knee_suite_reports_the_large_budgets_step_at_its_budget(aid):
    # rankaa28 version 2 is frozen at a step of rankaa28plus's ladder: its runs are the larger engine's first runs
    # (the clean run, then the first targeted one or a random restart), so each query's reported value is that
    # engine's worst case recorded after the same runs (the budget study's column), on every attack
    toy = Toy(n=1000, seed=11)
    kw = dict(eps=0.15, alpha=0.02, steps=4, b=16, **PARAMS.get(aid, {}))
    small = toy.attack(aid, engine=Engine(schedule="apgd-paper", steps=6, restarts=1, targets=1, check_queries=0),
                       **kw)
    large = toy.attack(aid, engine=Engine(schedule="apgd-paper", steps=6, restarts=3, targets=2, check_queries=0,
                                          search_steps=20), **kw)
    for k, parts in small.extra["parts"].items():
        assert torch.equal(parts["final"], large.extra["parts"][k]["g16"]), k
        assert torch.equal(small.per_query[k].double(), parts["final"]), k


def test_a_search_joins_every_querys_worst_case_and_reports_against_the_gradient():
    from test_attacks import Toy as _Toy  # noqa: F401  (the same setup as above)

    toy = Toy(n=1000, seed=8)
    eng = Engine(steps=4, restarts=1, check_queries=0, search_steps=40, search_p_init=0.8)
    out = toy.attack("TMA", eps=0.1, alpha=0.01, steps=4, b=12, engine=eng)
    parts = out.extra["parts"]["TMA"]
    assert eng.ladder(4) == ["g4", "g8", "g8+s40"]
    assert (resistance("TMA", parts["g8+s40"]) <= resistance("TMA", parts["g8"])).all()
    assert torch.equal(out.extra["check_gradient"]["TMA"], parts["g8"])
    assert out.extra["check"]["TMA"].shape == (12,)  # the search ran on every query
    # the worst case takes the search's point wherever it was better than every gradient run
    better = resistance("TMA", out.extra["check"]["TMA"]) < resistance("TMA", parts["g8"])
    assert torch.allclose(parts["g8+s40"][better], out.extra["check"]["TMA"][better])


def test_engine_fields_beyond_version_1_leave_its_hash_alone_and_are_validated():
    from attacks.suites import RANKAA28, RANKAA28PLUS

    assert set(Engine().params) == {"schedule", "steps", "restarts", "with_pgd", "check_queries", "check_steps"}
    assert RANKAA28PLUS.engine.gradients == 1000 and RANKAA28PLUS.engine.ladder(32)[-1] == "g1032+s5000"
    assert RANKAA28PLUS.hash != RANKAA28.hash and RANKAA28PLUS.protocols == ("corrected",)
    for bad in (dict(targets=-1), dict(eot=0), dict(search_steps=1.5), dict(search_p_init=0.0), dict(eot=True),
                dict(prune=1)):
        with pytest.raises(UserError, match="engine"):
            Engine(**bad)


# ---------------------------------------------------------------------------------------- gradient masking


class Randomised(nn.Module):
    """A randomised defense: uniform noise of width 0.3 added to the input at every forward (its own generator)."""

    def __init__(self):
        super().__init__()
        self.inner = Quantised().lin
        self.generator = torch.Generator().manual_seed(1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        x = x.flatten(1)
        return self.inner(x + torch.rand(x.shape, generator=self.generator) * 0.3)


class Saturating(nn.Module):
    """Vanishing gradients: a softmax at temperature 1e-6 after the layer, exactly one-hot in float32, so the input
    gradient is exactly zero while the ranking still moves with the input."""

    def __init__(self):
        super().__init__()
        self.inner = Quantised().lin

    def forward(self, x):
        return torch.softmax(1e6 * self.inner(x.flatten(1)), dim=1)


def _masking_eval(model, tmp_path, engine=None, **config):
    from robustbench_dml.datasets import TensorDataset, info
    from robustbench_dml.evaluation import EvalConfig, evaluate, model_target

    g = torch.Generator().manual_seed(5)
    images = torch.randint(256, (300, 1, 2, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(5, (300,), generator=g).numpy()
    suite = Suite(id="tiny_strong", version=1, eps=0.2, alpha=0.02, steps=4, batch_size=16,
                  attacks=(ROB28.attacks[2], ROB28.attacks[4], ROB28.attacks[7]),
                  engine=engine or Engine(steps=4, restarts=1, check_queries=8, check_steps=40))
    target = model_target(model, {"dataset": "digits"}, TensorDataset(images, labels, info("digits")))
    return evaluate(target, EvalConfig(suite, max_queries=32, **config), device="cpu", benign_nmi=False,
                    state_dir=tmp_path)


@pytest.mark.parametrize("model", [Quantised, Saturating])
def test_shattered_and_saturated_gradients_are_flagged(model, tmp_path):
    from robustbench_dml.cli.report import protocol_lines

    result = _masking_eval(model(), tmp_path)
    engine = result.extra["engine"]
    # the input gradient is dead on queries whose loss could still fall, far more than the flag's share
    from robustbench_dml.evaluation import NO_GRADIENT_SHARE

    assert min(engine["no_gradient"]["TMA"], engine["no_gradient"]["QA+"]) >= 3 * NO_GRADIENT_SHARE
    assert set(engine["masking_suspected"]) >= {"TMA", "QA+"}
    assert engine["randomised"] == []
    assert any("gradient masking is likely" in line for line in protocol_lines(result))


def test_a_randomised_model_is_flagged_and_eot_averages_its_gradient(tmp_path):
    from robustbench_dml.cli.report import protocol_lines

    result = _masking_eval(Randomised(), tmp_path / "a")
    assert set(result.extra["engine"]["randomised"]) == {"QA+", "TMA", "GTM"}
    assert any("expectation over transformation" in line for line in protocol_lines(result))
    # eot = 3: every APGD step runs three forwards, and the override is recorded (its own suite hash)
    calls = {}
    for eot in (1, 3):
        model = Randomised()
        res = _masking_eval(model, tmp_path / f"eot{eot}", attacks=("TMA",), eot=eot if eot > 1 else None)
        calls[eot] = model.calls
        assert res.suite["overrides"].get("eot") == (eot if eot > 1 else None)
    apgd_steps = 4 * 2  # two batches of 16, one 4-step run each
    assert calls[3] - calls[1] == 2 * apgd_steps


def test_eot_changes_nothing_on_a_deterministic_model():
    toy = Toy(n=1000, seed=9)
    one = toy.attack("QA-", eps=0.1, alpha=0.01, steps=4, b=8, M=1, engine=Engine(steps=6, restarts=1, check_queries=0))
    three = toy.attack("QA-", eps=0.1, alpha=0.01, steps=4, b=8, M=1,
                       engine=Engine(steps=6, restarts=1, check_queries=0, eot=3))
    assert torch.equal(one.per_query["QA-"], three.per_query["QA-"])
    assert three.iterations == 4 + 3 * 6


class _Counting(nn.Module):
    """The toy model, counting the images it embeds."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("aid", attacks.list_attacks())
def test_pruning_the_queries_at_the_floor_changes_no_result(aid):
    # AutoAttack's rule: after the first APGD run only the queries still above the floor (an ERS term of 0 on some
    # key) are attacked. Nothing can beat the floor and the draws do not depend on the pruned set, so every result,
    # every ladder step and where the search beat the gradients equal the unpruned run's (a query at the floor is
    # not searched and reports the gradients' value); the model sees fewer images
    toy = Toy(n=1000, seed=9)
    kw = dict(eps=0.15, alpha=0.02, steps=4, **PARAMS.get(aid, {}))
    out, rows = {}, {}
    for prune in (False, True):
        model = _Counting(toy.model)
        atk = attacks.create(aid, model=model, engine=Engine(steps=6, restarts=3, targets=1, check_queries=0,
                                                             search_steps=20, prune=prune), **kw)
        out[prune] = atk(toy.images[:16], toy.labels[:16], toy.gallery, generator=torch.Generator().manual_seed(1),
                         query_index=torch.arange(16))
        rows[prune] = model.rows
    a, b = out[False], out[True]
    for k in a.per_query:
        assert torch.equal(a.per_query[k], b.per_query[k]), k
    assert torch.equal(a.success, b.success) and a.iterations == b.iterations
    for k, parts in a.extra["parts"].items():
        for name, v in parts.items():
            if name != "restarts":  # the best of the gradient runs alone (no PGD) may stop at the pruning point
                assert torch.equal(v, b.extra["parts"][k][name]), (k, name)
    def floor(step):
        return torch.stack([resistance(k, v[step]) <= 0 for k, v in a.extra["parts"].items()]).all(dim=0)

    at_floor, searched = floor("g10"), ~floor("g28")  # after the first APGD run; before the search
    for k, found in a.extra["check"].items():
        gradient = a.extra["check_gradient"][k]
        assert torch.equal(found[searched], b.extra["check"][k][searched])
        assert torch.equal(b.extra["check"][k][~searched], gradient[~searched])
        assert torch.equal(resistance(k, found) < resistance(k, gradient),
                           resistance(k, b.extra["check"][k]) < resistance(k, gradient))
    # a query at the floor after a run spares the next run's 6 forwards; before the search, its 1 + 20
    n = {step: int(floor(step).sum()) for step in ("g10", "g16", "g22", "g28")}
    assert rows[False] - rows[True] == 6 * (n["g10"] + n["g16"] + n["g22"]) + 21 * n["g28"]
    if aid in ("GTM", "LTM", "GTT"):
        assert at_floor.any()  # the test exercises the pruning on the binary attacks


@pytest.mark.parametrize("aid", ["CA+", "CA-"])
def test_ca_s_counting_table_changes_no_part_of_a_strong_run(aid, monkeypatch):
    # every measurement after the clean one reads CA's sorted table (APGD's iterates, the search's proposals, on
    # the active rows only); without the table (as where it does not fit the memory budget) each is a pass over
    # the gallery: the same run, the same bits
    from attacks.candidate import CandidateAttack

    toy = Toy(n=1000, seed=9)
    eng = Engine(steps=4, restarts=1, targets=1, check_queries=0, search_steps=30, search_p_init=0.8)
    table = toy.attack(aid, eps=0.1, alpha=0.01, steps=4, b=8, W=2, engine=eng)
    select = CandidateAttack.select

    def without_table(self, *args):
        state = select(self, *args)
        assert {"rank_sq", "rank_order"} <= set(state)  # it fits the default budget
        return {k: v for k, v in state.items() if not k.startswith("rank_")}

    monkeypatch.setattr(CandidateAttack, "select", without_table)
    passes = toy.attack(aid, eps=0.1, alpha=0.01, steps=4, b=8, W=2, engine=eng)
    parts = table.extra["parts"][aid]
    assert set(parts) >= {"g4", "g8", "g12", "g12+s30"}
    for name, values in parts.items():
        assert torch.equal(values, passes.extra["parts"][aid][name]), name
    assert torch.equal(table.x_adv, passes.x_adv) and torch.equal(table.success, passes.success)
