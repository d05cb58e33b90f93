"""The checkable properties of each defense (numbered items 1-40), cost counts against each defense's cost line,
state round trips and a training smoke test per registered defense. Tiny fp64 models on 1x8x8 inputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import defenses
from defenses.act import pn_collapse
from defenses.base import StepContext
from defenses.ca_tride import anp_attack, anp_objective, cap_attack, lambda_for, lambda_from_entanglement
from defenses.est import embedding_shift_attack
from defenses.hm import hardness_manipulation, ics_lambda_for, lga_level
from defenses.losses import (attention_weights, collapseness, hardness, ics_loss, mean_smallest,
                             multi_similarity_loss, pairwise_distance, top_ranked_loss, triplet_loss,
                             weighted_mean)
from defenses import mdprop
from defenses.miners import MINERS
from defenses.routed_bn import RoutedBatchNorm, bn_route
from attacks.pgd import eval_mode
from robustbench_dml.errors import UserError
from robustbench_dml.metrics import entanglement

ALL_DEFENSES = defenses.list_defenses()  # every registered defense
PGD_DEFENSES = [d for d in ALL_DEFENSES if d != "vanilla"]
EPS, ALPHA, STEPS = 0.1, 0.03, 4


# ---------------------------------------------------------------- fixtures

class Tiny(nn.Module):
    """conv3x3(1->3) [BN] tanh -> Linear(192->6): pixels (B,1,8,8) -> raw 6-d embeddings."""

    def __init__(self, bn: bool = False, seed: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.fc = nn.Linear(192, 6)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.6 if p.dim() > 1 else 0.1))
        self.double()

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


class Wrapper(nn.Module):
    """A DDP stand-in: ``.module`` is the real network; every call records (input, training flag)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.module = inner
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), self.training))
        return self.module(x)


class Counter:
    """Counts forward calls of a module and backward passes through its output."""

    def __init__(self, module: nn.Module):
        self.forward = 0
        self.backward = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.forward += 1
        if out.requires_grad:
            out.register_hook(self._bw)

    def _bw(self, grad):
        self.backward += 1


def data(n_pairs=6, seed=0, n_classes=4):
    """SPC-2 batch of class-structured images: a per-class prototype plus noise (same-class pairs embed
    closer than different-class ones, so the batch starts uncollapsed, C < 0)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(n_classes, 1, 8, 8, generator=g, dtype=torch.float64)
    y = (torch.arange(n_pairs) % n_classes).repeat_interleave(2)
    x = 0.75 * protos[y] + 0.25 * torch.rand(2 * n_pairs, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, y


def ctx(seed=0, epoch=2, max_epochs=4, dataset="digits", step=0):
    return StepContext(epoch=epoch, max_epochs=max_epochs, global_step=step,
                       generator=torch.Generator().manual_seed(seed), dataset=dataset)


def make(name, **over):
    base = {"mdprop": dict(eps=0.05, steps=1)}.get(name, dict(eps=EPS, alpha=ALPHA, steps=STEPS))
    if name == "vanilla":
        base = {}
    return defenses.create(name, preset="28", **{**base, **over})


def prepared(name, bn=None, seed=0, defense=None):
    d = defense or make(name)
    inner = Tiny(bn=(name == "mdprop") if bn is None else bn, seed=seed)
    inner = d.prepare_model(inner)
    w = Wrapper(inner)
    d.train_mode(w)
    return d, w, inner


def step(d, w, x, y, c=None):
    d.train_mode(w)
    return d.training_step(w, x, y, c or ctx())


def train_input(w):
    rows = [x for x, training in w.calls if training]
    assert len(rows) == 1, "exactly one training-mode forward through the (DDP) wrapper"
    return rows[0]


class RecordingMiner:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, emb, labels, generator, **kw):
        out = self.fn(emb, labels, generator, **kw)
        self.calls.append((emb.clone(), out))
        return out


@pytest.fixture
def record_miner(monkeypatch):
    def install(name):
        rec = RecordingMiner(MINERS.get(name))
        monkeypatch.setitem(MINERS._entries, name, rec)
        return rec
    return install


@pytest.fixture
def record_ghard(monkeypatch):
    import defenses.ca_tride as ct

    def install():
        rec = RecordingMiner(ct.ghard_miner)
        monkeypatch.setattr(ct, "ghard_miner", rec)
        return rec
    return install


def e(net, x):
    return F.normalize(net(x), dim=1)


def _scalar(t) -> float:
    """A loss or statistic as a Python float, detached from the graph first."""
    return t.detach().item() if isinstance(t, torch.Tensor) else float(t)


# ---------------------------------------------------------------- configuration

def test_registry_presets_and_config_errors():
    assert set(defenses.list_defenses()) >= {"vanilla", "est", "act", "hm", "ca_tride", "mdprop"}
    for name in ("est", "act", "hm"):
        c = defenses.create(name, preset="224").config
        assert (c.eps, c.alpha, c.steps) == (8 / 255, 1 / 255, 32)
        c = defenses.create(name, preset="28").config
        assert (c.eps, c.alpha, c.steps) == (77 / 255, 3 / 255, 32)
    hm = defenses.create("hm").config
    assert (hm.srch, hm.destination, hm.ics, hm.ics_lambda) == ("softhard", "lga", True, None)
    ca = defenses.create("ca_tride", preset="224").config
    assert (ca.steps, ca.eps, ca.alpha, ca.step_ramp, ca.assist_warmup_fraction, ca.lam, ca.mode) == \
        (16, 8 / 255, 1 / 255, True, 0.25, None, "alternate")
    md = defenses.create("mdprop", preset="224").config
    assert (md.eps, md.steps, md.random_start, md.attacker1_targets, md.attacker2_targets) == (0.01, 1, 5e-4, 1, 5)
    for name in defenses.list_defenses():
        with pytest.raises(TypeError, match="bogus"):
            defenses.create(name, bogus=1)
        assert isinstance(defenses.create(name).config.to_dict(), dict)
    with pytest.raises(ValueError, match="preset"):
        defenses.create("hm", preset="96")
    with pytest.raises(ValueError):
        defenses.create("hm", destination="kl")
    with pytest.raises(UserError):
        defenses.create("act", miner="nope")


# ---------------------------------------------------------------- shared items 1-6

def attack_runs(net, x, y, eps, alpha, steps):
    """Every training-time adversary on the same batch: name -> (x_in, x_adv)."""
    z = e(net, x).detach()
    anc, pos, neg = MINERS.get("random")(z, y, torch.Generator().manual_seed(0))
    out = {"es": (x, embedding_shift_attack(net, x, z, eps=eps, alpha=alpha, steps=steps,
                                            generator=torch.Generator().manual_seed(0)).x_adv)}
    p, n, _ = pn_collapse(net, x[pos], x[neg], eps=eps, alpha=alpha, steps=steps)
    out["act"] = (torch.cat([x[pos], x[neg]]), torch.cat([p, n]))
    a, p, n, _ = hardness_manipulation(net, x[anc], x[pos], x[neg], torch.tensor(0.0, dtype=x.dtype),
                                       eps=eps, alpha=alpha, steps=steps)
    out["hm"] = (torch.cat([x[anc], x[pos], x[neg]]), torch.cat([a, p, n]))
    r = cap_attack(net, torch.cat([x[pos], x[neg]]), z[pos], lam=10.0,  # anchors at p: C < 0
                   eps=eps, alpha=alpha, steps=steps, tol=-1)
    out["cap"] = (torch.cat([x[pos], x[neg]]), r.x_adv)
    r = anp_attack(net, x[anc], z[anc], z[pos], z[neg], lam=10.0, eps=eps, alpha=alpha, steps=steps, tol=-1)
    out["anp"] = (x[anc], r.x_adv)
    return out


@pytest.mark.parametrize("bn", [False, True])
def test_items_1_2_3_budget_no_random_start_and_no_side_effects(bn):
    net = Tiny(bn=bn)
    if bn:  # non-trivial running statistics
        net.train()
        with torch.no_grad():
            net(torch.rand(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9)))
    net.train()
    params = copy.deepcopy(net.state_dict())
    x, y = data()
    with eval_mode(net):
        runs = attack_runs(net, x, y, EPS, ALPHA, STEPS)
        zero_eps = attack_runs(net, x, y, 0.0, ALPHA, STEPS)
        zero_steps = attack_runs(net, x, y, EPS, ALPHA, 0)
        fgsm = attack_runs(net, x, y, EPS, ALPHA, 1)
    for name, (x0, xa) in runs.items():
        assert (xa - x0).abs().max() <= EPS + 1e-7, name  # item 1
        assert xa.min() >= 0 and xa.max() <= 1, name
        assert (xa - x0).abs().max() > 0, name
        assert torch.equal(zero_eps[name][1], zero_eps[name][0]), name  # item 2
        assert torch.equal(zero_steps[name][1], zero_steps[name][0]), name
        d = (fgsm[name][1] - fgsm[name][0]).abs()
        moved = d[d > 0]  # an FGSM step is exactly eps (unless clipped at 0 or 1)
        interior = ((fgsm[name][0] > EPS) & (fgsm[name][0] < 1 - EPS))[d > 0]
        assert torch.allclose(moved[interior], torch.full_like(moved[interior], EPS), atol=1e-12), name
    # item 3: parameters, grads, buffers and modes untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert all(m.training for m in net.modules())


def test_item_1_mdprop_bounds_are_batch_min_max():
    d, w, inner = prepared("mdprop")
    x, _ = data()
    x = 0.2 + 0.5 * x  # batch range [0.2, 0.7]
    eps = 0.05
    with eval_mode(inner):
        xa, _, res = mdprop.feature_attack(inner, x, "adv1", 1, eps=eps, alpha=eps, steps=1, random_start=5e-3,
                                    generator=torch.Generator().manual_seed(0))
    lo = torch.clamp(x - eps, min=float(x.min()))
    hi = torch.clamp(x + eps, max=float(x.max()))
    assert bool((xa >= lo - 1e-12).all() and (xa <= hi + 1e-12).all())
    assert (xa - x).abs().max() > 0 and res.iterations == 1


@pytest.mark.parametrize("name", ALL_DEFENSES)
def test_item_3_step_leaves_modes_params_and_grads(name):
    d, w, inner = prepared(name)
    modes = [m.training for m in w.modules()]
    params = copy.deepcopy(inner.state_dict())
    x, y = data()
    r = step(d, w, x, y)
    assert [m.training for m in w.modules()] == modes
    assert all(p.grad is None for p in w.parameters())
    if name != "mdprop" and not (name == "est" and d.config.bn_live):
        for k, v in inner.state_dict().items():
            assert torch.equal(v, params[k]), k
    assert r.loss.requires_grad and r.loss.dim() == 0 and math.isfinite(_scalar(r.loss))


def test_item_4_only_designated_images_move(record_miner, record_ghard):
    x, y = data()
    # EST: all 2N images may move, within eps
    d, w, _ = prepared("est", bn=False)
    step(d, w, x, y)
    xa = train_input(w)
    assert xa.shape == x.shape and (xa - x).abs().max() <= EPS + 1e-7
    assert bool(((xa - x).abs().flatten(1).amax(1) > 0).all())
    # ACT: anchors untouched, p and n moved
    rec = record_miner("random")
    d, w, _ = prepared("act")
    step(d, w, x, y)
    anc, pos, neg = rec.calls[-1][1]
    n = len(anc)
    xa = train_input(w)
    assert torch.equal(xa[:n], x[anc])
    assert (xa[n:2 * n] - x[pos]).abs().max() > 0 and (xa[2 * n:] - x[neg]).abs().max() > 0
    # HM: a, p, n all perturbed (destination 2 makes every triplet move); ICS rows clean
    rec = record_miner("random")
    d, w, _ = prepared("hm", defense=make("hm", srch="random", destination="const", hd_const=2.0))
    step(d, w, x, y)
    anc, pos, neg = rec.calls[-1][1]
    xa = train_input(w)
    for k, idx in enumerate((anc, pos, neg)):
        assert bool(((xa[k * n:(k + 1) * n] - x[idx]).abs().flatten(1).amax(1) > 0).all())
    assert torch.equal(xa[3 * n:4 * n], x[anc]) and torch.equal(xa[4 * n:], x[pos])
    # CA-TRIDE: CAP moves only p, n; ANP only anchors
    rec = record_ghard()
    d, w, _ = prepared("ca_tride", defense=make("ca_tride", early_stop_tol=-1.0))
    for phase in (0, 1):
        w.calls.clear()
        r = step(d, w, x, y, ctx(step=phase))
        assert r.stats["phase"] == phase
        anc, pos, neg = rec.calls[-1][1]
        xa = train_input(w)
        moved = [bool((xa[k * n:(k + 1) * n] - x[i]).abs().max() > 0) for k, i in enumerate((anc, pos, neg))]
        assert moved == ([False, True, True] if phase == 0 else [True, False, False])
    # MDProp: clean rows exact, every adversarial row moved
    d, w, _ = prepared("mdprop")
    step(d, w, x, y)
    xa = train_input(w)
    assert xa.shape[0] == 2 * len(x) and torch.equal(xa[:len(x)], x)
    assert bool(((xa[len(x):] - x).abs().flatten(1).amax(1) > 0).all())


def expected_cost(name, cfg, iterations):
    """The per-step cost lines of the defense docstrings in model calls (F) and backward passes (B), our layout."""
    if name == "vanilla":
        return 1, 1
    if name == "mdprop":
        return 2 + iterations + 1, iterations + 1  # 2 target forwards + attack F/B + one mixed F/B
    return 1 + iterations + 1, iterations + 1      # clean no-grad F + attack F/B + training F/B


@pytest.mark.parametrize("name", ALL_DEFENSES)
def test_item_5_forward_backward_counts(name):
    d, w, inner = prepared(name)
    counter = Counter(inner)
    x, y = data()
    r = step(d, w, x, y)
    bw_attack = counter.backward
    r.loss.backward()
    assert (r.n_forward, r.n_backward) == (counter.forward, counter.backward)
    it = int(r.stats.get("iterations", 0))
    assert bw_attack == it
    assert (r.n_forward, r.n_backward) == expected_cost(name, d.config, it)
    if name in ("est", "act"):
        assert it == STEPS  # no early stop
    if name == "mdprop":
        assert it == 2 * d.config.steps


def test_item_5_ca_tride_costs_about_half_of_hm_at_default_steps():
    x, y = data()
    costs = {}
    for name, over in (("hm", dict(early_stop_tol=-1.0, destination="const", hd_const=2.0)),
                       ("ca_tride", dict(early_stop_tol=-1.0))):
        d = defenses.create(name, preset="28", **over)
        assert d.config.steps == (32 if name == "hm" else 16)
        _, w, inner = prepared(name, defense=d)
        counter = Counter(inner)
        r = step(d, w, x, y)
        r.loss.backward()
        assert (r.n_forward, r.n_backward) == (counter.forward, counter.backward)
        costs[name] = r.n_forward + r.n_backward
    assert costs["hm"] == 34 + 33 and costs["ca_tride"] == 18 + 17
    assert 0.45 <= costs["ca_tride"] / costs["hm"] <= 0.6


def scaled_copy(inner, c):
    other = copy.deepcopy(inner)
    with torch.no_grad():
        other.fc.weight.mul_(c)
        other.fc.bias.mul_(c)
    return other


@pytest.mark.parametrize("name", ALL_DEFENSES)
def test_item_6_losses_use_normalised_embeddings(name):
    d, w, inner = prepared(name)
    x, y = data()
    copies = {c: Wrapper(scaled_copy(inner, c)) for c in (0.01, 25.0)}  # before live BN stats move
    ref = _scalar(step(d, w, x, y, ctx(seed=3)).loss)
    for c, w2 in copies.items():
        d2 = make(name)
        assert _scalar(step(d2, w2, x, y, ctx(seed=3)).loss) == pytest.approx(ref, rel=1e-7, abs=1e-9)


# ---------------------------------------------------------------- vanilla 7-9

def test_item_8_vanilla_loss_formula(record_miner):
    rec = record_miner("random")
    d, w, inner = prepared("vanilla")
    x, y = data()
    r = step(d, w, x, y)
    loss = _scalar(r.loss)
    anc, pos, neg = rec.calls[-1][1]
    assert bool((y[neg] != y[anc]).all())  # item 7
    z = e(inner, x)
    manual = torch.stack([F.relu((z[a] - z[p]).norm() - (z[a] - z[n]).norm() + 0.2)
                          for a, p, n in zip(anc, pos, neg)]).mean()
    assert loss == pytest.approx(_scalar(manual), abs=1e-5)
    assert 0.0 <= loss <= 2.2


@pytest.mark.parametrize("name,over", [("vanilla", {}), ("act", {}), ("hm", {}), ("ca_tride", {}),
                                       ("est", {"bn_live": False})])
def test_item_9_bn_frozen_through_an_optimiser_step(name, over):
    d = make(name, **over)
    d, w, inner = prepared(name, bn=True, defense=d)
    assert not inner.bn.training and inner.fc.training
    buffers = {k: v.clone() for k, v in inner.named_buffers()}
    opt = torch.optim.SGD(inner.parameters(), lr=0.1)
    x, y = data()
    r = step(d, w, x, y, ctx(epoch=3))
    r.loss.backward()
    opt.step()
    assert not inner.bn.training
    for k, v in inner.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert inner.bn.weight.grad is not None  # affine weights stay trainable


# ---------------------------------------------------------------- EST 10-13

def test_item_10_est_shift_grows_with_steps():
    net = Tiny().eval()
    x, _ = data()
    z = e(net, x).detach()
    shift = {}
    for steps in (0, 32):
        xa = embedding_shift_attack(net, x, z, eps=EPS, alpha=0.01, steps=steps,
                                    generator=torch.Generator().manual_seed(0)).x_adv
        shift[steps] = _scalar((e(net, xa) - z).norm(dim=1).mean())
    assert shift[0] == 0.0 and shift[32] > 0.05


def test_items_11_12_est_mines_adversarial_embeddings_and_reduces_to_vanilla(record_miner):
    rec = record_miner("random")
    x, y = data()
    d, w, inner = prepared("est")
    step(d, w, x, y)
    emb, (anc, pos, neg) = rec.calls[-1]
    xa = train_input(w)
    assert not torch.equal(xa, x)
    assert torch.allclose(emb, e(inner, xa), atol=1e-12)  # item 12: mined on f(x_adv)
    # item 11: eps = 0 -> the vanilla loss on the same triplets
    d0, w0, inner0 = prepared("est", defense=make("est", eps=0.0))
    r0 = step(d0, w0, x, y)
    emb0, (anc, pos, neg) = rec.calls[-1]
    assert torch.equal(train_input(w0), x)
    z = e(inner0, x)
    assert _scalar(r0.loss) == pytest.approx(_scalar(triplet_loss(z[anc], z[pos], z[neg])), abs=1e-12)


@pytest.mark.parametrize("bn_live", [True, False])
def test_item_13_est_bn_flag(bn_live):
    d = make("est", bn_live=bn_live)
    d, w, inner = prepared("est", bn=True, defense=d)
    before = inner.bn.running_mean.clone()
    x, y = data()
    step(d, w, x, y)
    changed = not torch.equal(before, inner.bn.running_mean)
    assert changed == bn_live
    assert inner.bn.training == bn_live


# ---------------------------------------------------------------- ACT 14-17

def test_item_14_pncollapse_reduces_pn_distance():
    net = Tiny().eval()
    x, y = data()
    anc, pos, neg = MINERS.get("random")(e(net, x).detach(), y, torch.Generator().manual_seed(0))
    p, n, _ = pn_collapse(net, x[pos], x[neg], eps=EPS, alpha=ALPHA, steps=8)
    before = pairwise_distance(e(net, x[pos]), e(net, x[neg])).mean()
    after = pairwise_distance(e(net, p), e(net, n)).mean()
    assert after < before - 1e-3


def test_items_15_16_17_act_loss(record_miner):
    rec = record_miner("random")
    x, y = data()
    d, w, inner = prepared("act")
    r = step(d, w, x, y)
    anc, pos, neg = rec.calls[-1][1]
    n = len(anc)
    xa = train_input(w)
    assert torch.equal(xa[:n], x[anc])  # item 15: anchors untouched, train-mode forward
    z = e(inner, xa)
    assert _scalar(r.loss) == pytest.approx(_scalar(triplet_loss(z[:n], z[n:2 * n], z[2 * n:])), abs=1e-12)
    zc = e(inner, x)
    clean = _scalar(triplet_loss(zc[anc], zc[pos], zc[neg]))
    assert abs(_scalar(r.loss) - clean) > 1e-4  # item 17: no clean-triplet term, the loss is adversarial only
    d0, w0, _ = prepared("act", defense=make("act", eps=0.0))
    r0 = step(d0, w0, x, y)
    anc, pos, neg = rec.calls[-1][1]
    assert _scalar(r0.loss) == pytest.approx(_scalar(triplet_loss(zc[anc], zc[pos], zc[neg])), abs=1e-12)  # item 16


# ---------------------------------------------------------------- HM 18-25

@pytest.mark.parametrize("ics", [False, True])
def test_item_18_hm_same_miners_is_regular_training(record_miner, ics):
    rec = record_miner("semihard")
    x, y = data()
    d, w, inner = prepared("hm", defense=make("hm", srch="semihard", desth="semihard", ics=ics))
    r = step(d, w, x, y)
    anc, pos, neg = rec.calls[0][1]
    n = len(anc)
    xa = train_input(w)
    assert torch.equal(xa[:3 * n], torch.cat([x[anc], x[pos], x[neg]])) and r.stats["iterations"] == 0
    z = e(inner, x)
    lt = _scalar(triplet_loss(z[anc], z[pos], z[neg]))
    assert _scalar(r.loss) == pytest.approx(lt, abs=1e-12)  # ICS: d(a, a~) ~ 1e-6 < d(a, p) -> 0
    assert r.n_forward == 2 and r.n_backward == 1


def test_items_19_20_hm_per_triplet_freeze_and_objective():
    net = Tiny().eval()
    x, y = data(n_pairs=8)
    z = e(net, x).detach()
    anc, pos, neg = MINERS.get("random")(z, y, torch.Generator().manual_seed(1))
    h_s = hardness(z[anc], z[pos], z[neg])
    n = len(anc)
    up = torch.arange(n) % 2 == 0
    h_d = torch.where(up, h_s + 0.1, h_s - 0.05)
    a, p, ng, res = hardness_manipulation(net, x[anc], x[pos], x[neg], h_d, eps=EPS, alpha=0.01, steps=10)
    for i in range(n):
        same = torch.equal(a[i], x[anc[i]]) and torch.equal(p[i], x[pos[i]]) and torch.equal(ng[i], x[neg[i]])
        assert same == (not bool(up[i])), i  # frozen exactly when H_S >= H_D
    h_adv = hardness(e(net, a), e(net, p), e(net, ng))
    assert bool((h_adv[up] >= h_s[up] - 1e-9).all()) and (h_adv[up] - h_s[up]).mean() > 0.01

    def et(h):
        return _scalar(torch.clamp(h - h_d, max=0).pow(2).mean())

    assert et(h_adv) < et(h_s)  # item 20
    scalar = torch.tensor(float(h_s.min()) - 0.01, dtype=x.dtype)
    a, p, ng, res = hardness_manipulation(net, x[anc], x[pos], x[neg], scalar, eps=EPS, alpha=0.01, steps=10)
    assert res.last_loss == 0.0 and torch.equal(torch.cat([a, p, ng]), torch.cat([x[anc], x[pos], x[neg]]))


def test_item_21_lga_destination():
    assert lga_level(2.0) == 1.0 and lga_level(0.1) == pytest.approx(0.5)
    assert lga_level(0.0) == 0.0 and lga_level(-0.3) == 0.0 and lga_level(0.2) == 1.0 and lga_level(5) == 1.0
    d = make("hm")
    z = F.normalize(torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.arange(4).repeat_interleave(2)
    for prev, want in ((2.0, -0.2), (0.1, -0.1), (0.0, 0.0), (-1.0, 0.0), (0.2, -0.2), (0.7, -0.2)):
        d.prev_loss = prev
        h_d, _ = d.destination_hardness(z, y, torch.Generator())
        assert h_d.dim() == 0 and float(h_d) == pytest.approx(want)
    # the paper's other destinations (l_bar = 0.5 here)
    anc, pos, neg = MINERS.get("semihard")(z, y, torch.Generator().manual_seed(1))
    benign = hardness(z[anc], z[pos], z[neg])
    for dest, want in (("lga_square", -0.2 * 0.25), ("lga_sqrt", -0.2 * math.sqrt(0.5)), ("const", 0.7),
                       ("benign", benign), ("lga_bias", benign + 0.1 * 0.5)):
        dd = make("hm", destination=dest, hd_const=0.7)
        dd.prev_loss = 0.1
        h_d, _ = dd.destination_hardness(z, y, torch.Generator().manual_seed(1))
        assert torch.allclose(h_d, torch.as_tensor(want, dtype=h_d.dtype), atol=1e-12), dest
    assert make("hm").prev_loss == 2.0
    # with LGA the destination miner changes nothing unless it equals the source
    x, y = data()
    losses = []
    for desth in ("semihard", "random", "distance"):
        dd, w, _ = prepared("hm", defense=make("hm", desth=desth))
        losses.append(_scalar(step(dd, w, x, y, ctx(seed=5)).loss))
    assert losses[0] == losses[1] == losses[2]


def test_items_22_23_prev_loss_and_ics(record_miner):
    rec = record_miner("softhard")
    x, y = data()
    for dataset, lam in (("digits", 0.5), ("sop", 0.05)):
        d, w, inner = prepared("hm", defense=make("hm", destination="const", hd_const=0.5))
        r = step(d, w, x, y, ctx(dataset=dataset))
        anc, pos, neg = rec.calls[-1][1]
        n = len(anc)
        z = e(inner, train_input(w))
        lt = triplet_loss(z[:n], z[n:2 * n], z[2 * n:3 * n])
        assert d.prev_loss == pytest.approx(_scalar(lt), abs=1e-12)  # item 22: pre-ICS
        a, a_adv, p = z[3 * n:4 * n], z[:n], z[4 * n:]
        manual_ics = torch.stack([F.relu((a[i] - a_adv[i]).norm() - (a[i] - p[i]).norm()) for i in range(n)]).mean()
        assert _scalar(manual_ics) > 0
        assert _scalar(r.loss) == pytest.approx(_scalar(lt) + lam * _scalar(manual_ics), abs=1e-5)
    assert ics_lambda_for("SOP") == 0.05 and ics_lambda_for("cub") == 0.5 and ics_lambda_for("sop", 0.3) == 0.3
    # the ICS gradient reaches both the clean and the adversarial branch
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    a_adv = (a.detach() + 0.8 * torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    p = (a.detach() + 0.1 * torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    ics_loss(F.normalize(a, dim=1), F.normalize(a_adv, dim=1), F.normalize(p, dim=1)).backward()
    assert a.grad.abs().sum() > 0 and a_adv.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


def test_item_24_hm_early_stop():
    x, y = data()
    d, w, _ = prepared("hm", defense=make("hm", destination="const", hd_const=-2.0, steps=32))
    r = step(d, w, x, y)
    assert r.stats["iterations"] == 2 and (r.n_forward, r.n_backward) == (4, 3)


def test_item_25_hm_destination_2_is_min_max_training():
    from attacks.pgd import pgd
    net = Tiny().eval()
    x, y = data()
    anc, pos, neg = MINERS.get("random")(e(net, x).detach(), y, torch.Generator().manual_seed(0))
    two = torch.tensor(2.0, dtype=x.dtype)
    a, p, n_, _ = hardness_manipulation(net, x[anc], x[pos], x[neg], two, eps=EPS, alpha=0.01, steps=6)
    n = len(anc)

    def neg_triplet(xx):
        z = e(net, xx)
        return -F.relu(hardness(z[:n], z[n:2 * n], z[2 * n:]) + 5.0).sum()  # margin 5: relu always active

    ref = pgd(neg_triplet, torch.cat([x[anc], x[pos], x[neg]]), eps=EPS, alpha=0.01, steps=6).x_adv
    assert torch.equal(torch.cat([a, p, n_]), ref)


# ---------------------------------------------------------------- CA-TRIDE 26-33

def test_item_26_weighted_mean_variants_against_hand_formulas():
    d = torch.tensor([0.3, 1.1, 0.7, 0.2], dtype=torch.float64)
    lam = 3.0
    naive = {  # the four definitions written out, without the stabilising shifts ("paper": the earlier name)
        "slides": torch.exp(-lam * d),
        "slides_detached": torch.exp(-lam * d),
        "paper": torch.exp(-lam * d),
        "released": torch.exp(lam * d),
        "research_build": torch.exp(-lam * torch.clamp(d - 2 * d.std(), min=0)),
    }
    for weighting, w in naive.items():
        assert float(weighted_mean(d, 0.0, weighting)) == pytest.approx(float(d.mean()))
        assert float(weighted_mean(d, lam, weighting)) == pytest.approx(float((w * d).sum() / w.sum()), rel=1e-12)
        assert math.isfinite(float(weighted_mean(d * 1000, 1e3, weighting)))
        assert float(collapseness(d, d.flip(0), 2.0, weighting)) == pytest.approx(
            float(weighted_mean(d, 2.0, weighting) - weighted_mean(d.flip(0), 2.0, weighting)))
    assert float(weighted_mean(d, 1e4, "slides_detached")) == pytest.approx(0.2)  # the closest pair
    assert float(weighted_mean(d, 1e4, "released")) == pytest.approx(1.1)  # the farthest pair
    # detached weights: every pair's gradient is its (positive) weight share; weights with gradient (the slides
    # literally, the release): dW/dd_i = (w_i / sum w)(1 - lambda (d_i - W)) by hand, negative for far pairs
    for weighting, detached in (("slides_detached", True), ("paper", True), ("research_build", True),
                                ("slides", False), ("released", False)):
        dd = d.clone().requires_grad_(True)
        weighted_mean(dd, 10.0, weighting).backward()
        w = attention_weights(d, 10.0, weighting)
        if detached:
            assert torch.allclose(dd.grad, w / w.sum(), atol=1e-12) and bool((dd.grad > 0).all())
        else:
            sign = -1.0 if weighting == "slides" else 1.0  # d/dd of the exponent: -lambda or +lambda
            mean = (w * d).sum() / w.sum()
            assert torch.allclose(dd.grad, w / w.sum() * (1 + sign * 10.0 * (d - mean)), atol=1e-12)
            assert bool((dd.grad < 0).any())
    with pytest.raises(ValueError, match="weighting"):
        weighted_mean(d, 1.0, "slide")


def test_entanglement_and_the_lambda_rule():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # intra pairs: (0,1), (2,3): sqrt 2 each; inter pairs: (0,2), (1,3): 2 and (0,3), (1,2): sqrt 2
    assert entanglement(z, y) == pytest.approx(math.sqrt(2) / ((2 + math.sqrt(2)) / 2))
    assert math.isnan(entanglement(z, torch.zeros(4, dtype=torch.long)))
    # the rule passes through the paper's pairs and is clipped to [0, 20]
    assert lambda_from_entanglement(0.66) == pytest.approx(2.0)
    assert lambda_from_entanglement(0.79) == pytest.approx(9.75)
    # no extrapolation: below the calibrated range SOP's 2 (trained 28x28 models, 0.27 to 0.46), above it 9.75
    assert lambda_from_entanglement(0.3) == pytest.approx(2.0) and lambda_from_entanglement(5.0) == pytest.approx(9.75)
    assert lambda_from_entanglement(0.7) == pytest.approx(2.0 + 0.04 * 7.75 / 0.13)
    assert lambda_from_entanglement(float("nan")) == 0.0


def test_item_27_phase_alternates_and_state_round_trips():
    x, y = data()
    d, w, inner = prepared("ca_tride")
    phases = []
    for s, epoch in enumerate((3, 0, 5, 1, 2)):
        phases.append(step(d, w, x, y, ctx(epoch=epoch, step=s)).stats["phase"])
    assert phases == [0, 1, 0, 1, 0]
    other = make("ca_tride")
    assert other.state_dict() == {"phase": 0}  # per instance, not process-global
    other.load_state_dict(d.state_dict())
    assert step(other, Wrapper(inner), x, y).stats["phase"] == 1
    for mode, want in (("cap", 0), ("anp", 1)):
        dm, wm, _ = prepared("ca_tride", defense=make("ca_tride", mode=mode))
        assert [step(dm, wm, x, y, ctx(step=s)).stats["phase"] for s in range(3)] == [want] * 3
    with pytest.raises(ValueError):
        d.load_state_dict({"flag": 1})


@pytest.mark.parametrize("phase", [0, 1])
def test_item_28_step_ramp(phase, record_ghard):
    x, y = data()
    rec = record_ghard()
    for epoch, eps in ((0, EPS), (1, EPS), (3, 0.05), (2, 1.0)):
        d, w, _ = prepared("ca_tride", defense=make("ca_tride", eps=eps, early_stop_tol=-1.0))
        d.load_state_dict({"phase": phase})
        r = step(d, w, x, y, ctx(epoch=epoch, max_epochs=4))
        anc, pos, neg = rec.calls[-1][1]
        change = (train_input(w) - x[torch.cat([anc, pos, neg])]).abs().max()
        bound = min(eps, STEPS * ALPHA * epoch / 4)
        assert float(change) <= bound + 1e-12
        if epoch == 0:
            assert float(change) == 0.0 and r.stats["iterations"] == 0
        else:
            assert float(change) > 0.5 * bound and r.stats["alpha_eff"] == pytest.approx(ALPHA * epoch / 4)


def test_ca_tride_assist_warmup_and_ramp_off():
    x, y = data()
    seen = {}
    for epoch in (1, 2):
        d, w, _ = prepared("ca_tride", defense=make("ca_tride", mode="anp"))
        seen[epoch] = step(d, w, x, y, ctx(epoch=epoch, max_epochs=8)).stats["assist"]
    assert seen == {1: 0.0, 2: 1.0}  # assist off in the first quarter (paper)
    d, w, _ = prepared("ca_tride", defense=make("ca_tride", step_ramp=False, early_stop_tol=-1.0))
    r = step(d, w, x, y, ctx(epoch=0))
    assert r.stats["alpha_eff"] == ALPHA and r.stats["iterations"] == STEPS
    g = torch.Generator().manual_seed(0)
    zp, zn = (F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    za = F.normalize(zn + 0.01 * zp, dim=1)  # collapsed: relu(C) > 0
    with_assist = anp_objective(za, za, zp, zn, lam=10.0, assist=True)
    without = anp_objective(za, za, zp, zn, lam=10.0, assist=False)
    c = collapseness(pairwise_distance(za, zp), pairwise_distance(za, zn), 10.0)
    assert float(with_assist - without) == pytest.approx(float(c)) and float(c) > 0


def test_mdprop_advprop_d_variant():
    d, w, inner = prepared("mdprop", defense=make("mdprop", n_aux=1))
    assert not hasattr(inner.bn, "aux_bn2")
    x, y = data()
    r = step(d, w, x, y)
    xa = train_input(w)
    assert xa.shape[0] == 2 * len(x) and torch.equal(xa[:len(x)], x)
    assert (r.n_forward, r.n_backward) == (1 + 1 + 1, 1 + 1)


def test_item_29_cap_early_break_and_phase_targets():
    net = Tiny().eval()
    x, y = data()
    z = e(net, x).detach()
    anc, pos, neg = MINERS.get("random")(z, y, torch.Generator().manual_seed(0))
    # anchors equal to the negatives' embeddings -> d_an = 0 < d_ap -> C > 0 -> no step
    cand = torch.cat([x[pos], x[neg]])
    res = cap_attack(net, cand, z[neg], lam=10.0, eps=EPS, alpha=ALPHA, steps=16)
    assert torch.equal(res.x_adv, cand) and res.iterations == 1
    # (the anchors/candidates split of each phase is checked in test_item_4)


def test_item_30_gamma_c_is_a_detached_constant():
    g = torch.Generator().manual_seed(0)
    zp = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    zn = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    za = F.normalize(zp + 0.05 * torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)  # well separated
    for anchor_src, sign in ((za, -1), (F.normalize(zn + 0.01 * zp, dim=1), 1)):
        ea = anchor_src.clone().requires_grad_(True)
        j = anp_objective(ea, za, zp, zn, lam=10.0, assist=False)
        j.backward()
        c = collapseness(pairwise_distance(ea, zp), pairwise_distance(ea, zn), 10.0)
        assert (_scalar(c) > 0) == (sign > 0)
        gamma = 1.0 if _scalar(c) >= 0 else math.exp(_scalar(c))
        ea2 = anchor_src.clone().requires_grad_(True)
        attack = F.relu(mean_smallest(pairwise_distance(ea2, zn)) - pairwise_distance(ea2, za).mean())
        assert _scalar(j) == pytest.approx(gamma * _scalar(attack), rel=1e-12)
        (gamma * attack).backward()
        assert torch.allclose(ea.grad, ea2.grad, atol=1e-12)
        if sign < 0:
            assert gamma < 1


@pytest.mark.parametrize("tr_steps", ["anp", "every_step"])
@pytest.mark.parametrize("phase", [0, 1])
def test_items_31_32_ca_tride_loss_has_top_ranked_term(phase, tr_steps, monkeypatch):
    # the slides: CAP trains on L_T(A, P~, N~), ANP on L_T(A~, P, N) + L_TR; "every_step" adds L_TR to both
    x, y = data()
    d, w, inner = prepared("ca_tride", defense=make("ca_tride", tr_steps=tr_steps))
    d.load_state_dict({"phase": phase})
    import defenses.ca_tride as ct
    got = []
    orig = ct.ghard_miner
    monkeypatch.setattr(ct, "ghard_miner", lambda *a, **k: got.append((k, orig(*a, **k))) or got[-1][1])
    r = step(d, w, x, y, ctx(epoch=4, max_epochs=4))
    kw, (anc, pos, neg) = got[-1]
    assert (kw["epoch"], kw["max_epochs"]) == (4, 4) and r.stats["miner_margin"] == pytest.approx(0.05)
    assert pos.tolist() == (anc + 1).tolist()
    n = len(anc)
    z = e(inner, train_input(w))
    d_ap, d_an = pairwise_distance(z[:n], z[n:2 * n]), pairwise_distance(z[:n], z[2 * n:])
    ltr = _scalar(F.relu(d_ap.sort().values[:n // 2].mean() - d_an.sort().values[:n // 2].mean() + 0.04))
    lt = _scalar(F.relu(d_ap - d_an + 0.2).mean())
    with_tr = phase == 1 or tr_steps == "every_step"
    assert _scalar(r.loss) == pytest.approx(lt + 0.5 * ltr * with_tr, abs=1e-12)
    assert _scalar(top_ranked_loss(d_ap, d_an)) == pytest.approx(ltr, abs=1e-12) and ltr > 0


def test_item_33_lambda_is_configuration():
    assert lambda_for("cub") == 10.0 and lambda_for("CARS") == 9.5 and lambda_for("sop") == 2.0
    assert lambda_for("digits") == "auto" and lambda_for("sop", 4.0) == 4.0
    assert lambda_for("cub", weighting="research_build") == "auto"
    assert lambda_for("digits", weighting="released") == 10.0 and lambda_for("sop", weighting="released") == 2.0
    x, y = data()
    stats = {}
    for lam in (None, 0.0, "auto"):
        d, w, inner = prepared("ca_tride", defense=make("ca_tride", lam=lam))
        stats[lam] = step(d, w, x, y, ctx(dataset="sop", epoch=0)).stats
    z = e(inner, x)
    anc, pos, neg = MINERS.get("semihard")(z.detach(), y, torch.Generator().manual_seed(0), margin=0.2)
    d_ap, d_an = pairwise_distance(z[anc], z[pos]), pairwise_distance(z[anc], z[neg])
    assert stats[None]["C"] == pytest.approx(_scalar(collapseness(d_ap, d_an, 2.0)), abs=1e-12)
    assert stats[0.0]["C"] == pytest.approx(_scalar(d_ap.mean() - d_an.mean()), abs=1e-12)
    assert stats["auto"]["lam"] == pytest.approx(lambda_from_entanglement(entanglement(z, y)))
    for bad in (-1.0, "big", float("inf"), True):
        with pytest.raises(ValueError, match="lam"):
            make("ca_tride", lam=bad)


# ---------------------------------------------------------------- MDProp 34-40

def test_items_34_40_mdprop_batch_assembly_and_single_criterion(monkeypatch):
    md = mdprop
    calls = []
    real = md.multi_similarity_loss
    monkeypatch.setattr(md, "multi_similarity_loss", lambda z, y, **kw: calls.append((z, y, kw)) or real(z, y, **kw))
    x, y = data()
    d, w, inner = prepared("mdprop")
    r = step(d, w, x, y)
    b, h = len(x), len(x) // 2
    xa = train_input(w)
    assert xa.shape[0] == 2 * b and torch.equal(xa[:b], x)
    eps = d.config.eps
    assert (xa[b:b + h] - x[:h]).abs().max() <= eps + 1e-12 and (xa[b + h:] - x[h:]).abs().max() <= eps + 1e-12
    training = [c for c in calls if c[0].requires_grad]  # the others are the detached adv_gain statistics
    assert len(training) == 1
    z, labels, kw = training[0]
    assert z.shape[0] == 2 * b and torch.equal(labels, torch.cat([y, y[:h], y[h:]]))
    assert kw == dict(pos_weight=2.0, neg_weight=40.0, margin=0.1, threshold=0.5)
    assert _scalar(r.loss) == _scalar(real(z, labels, **kw))


def _perturb(mods, attr, buffers=False):
    with torch.no_grad():
        for m in mods:
            bn = getattr(m, attr)
            bn.weight.add_(0.5)
            bn.bias.sub_(0.3)
            if buffers:
                bn.running_mean.add_(1.0)
                bn.running_var.mul_(3.0)


def test_items_35_36_mix_routing_and_eval_independence():
    d, w, inner = prepared("mdprop")
    mods = [m for m in inner.modules() if isinstance(m, RoutedBatchNorm)]
    assert len(mods) == 1
    x, _ = data(n_pairs=8)
    b = len(x)
    inp = torch.cat([x, x[:b // 2] * 0.9, x[b // 2:] * 0.8])
    sizes = (b, b // 2, b - b // 2)
    inner.train()

    def mixed():
        with bn_route(inner, "mix", sizes), torch.no_grad():
            return inner(inp)

    base = mixed()
    for attr, rows in (("aux_bn1", slice(b, b + b // 2)), ("aux_bn2", slice(b + b // 2, 2 * b))):
        _perturb(mods, attr)
        out = mixed()
        changed = (out - base).abs().amax(1) > 0
        expect = torch.zeros(2 * b, dtype=torch.bool)
        expect[rows] = True
        assert torch.equal(changed, expect), attr
        base = out
    inner.eval()
    with torch.no_grad():
        ev = inner(x)
        _perturb(mods, "aux_bn1", buffers=True)
        _perturb(mods, "aux_bn2", buffers=True)
        assert torch.equal(inner(x), ev)
        assert torch.equal(d.export_model(w).eval()(x), ev)


def test_item_37_targeted_attacks_approach_their_targets():
    d, w, inner = prepared("mdprop")
    x, _ = data()
    inner.eval()
    for route, t in (("adv1", 1), ("adv2", 5)):
        with eval_mode(inner):
            xa, targets, _ = mdprop.feature_attack(inner, x, route, t, eps=0.05, alpha=0.05, steps=1, random_start=0.0,
                                            generator=torch.Generator().manual_seed(0))
            with bn_route(inner, route), torch.no_grad():
                before = torch.stack([pairwise_distance(tk, e(inner, x)).mean() for tk in targets]).mean()
                after = torch.stack([pairwise_distance(tk, e(inner, xa)).mean() for tk in targets]).mean()
        assert targets.shape[0] == t and after < before


def test_item_38_targets_are_permuted_detached_aux_embeddings():
    d, w, inner = prepared("mdprop")
    mods = [m for m in inner.modules() if isinstance(m, RoutedBatchNorm)]
    _perturb(mods, "aux_bn1", buffers=True)
    x, _ = data()
    inner.train()
    with eval_mode(inner):
        _, targets, _ = mdprop.feature_attack(inner, x, "adv1", 3, eps=0.05, alpha=0.05, steps=1, random_start=0.0,
                                       generator=torch.Generator().manual_seed(4))
        with bn_route(inner, "adv1"), torch.no_grad():
            ref = e(inner, x)
        with torch.no_grad():
            main = e(inner, x)
    assert not targets.requires_grad
    assert not torch.allclose(ref, main)
    for tk in targets:
        dmat = torch.cdist(tk, ref, compute_mode="donot_use_mm_for_euclid_dist")
        idx = dmat.argmin(1)
        assert float(dmat.min(1).values.max()) < 1e-12
        assert sorted(idx.tolist()) == list(range(len(x)))


@pytest.mark.parametrize("copy_stats", [False, True])
def test_item_39_aux_bn_init(copy_stats):
    net = Tiny(bn=True)
    with torch.no_grad():
        net.bn.running_mean.fill_(0.3)
        net.bn.running_var.fill_(2.0)
        net.bn.weight.fill_(1.5)
    d = make("mdprop", aux_bn_copy_stats=copy_stats)
    d.prepare_model(net)
    for aux in (net.bn.aux_bn1, net.bn.aux_bn2):
        assert torch.equal(aux.weight, net.bn.weight) and torch.equal(aux.bias, net.bn.bias)
        want_mean = net.bn.running_mean if copy_stats else torch.zeros(3, dtype=torch.float64)
        want_var = net.bn.running_var if copy_stats else torch.ones(3, dtype=torch.float64)
        assert torch.equal(aux.running_mean, want_mean) and torch.equal(aux.running_var, want_var)


def test_mdprop_model_preparation_export_and_reload():
    from robustbench_dml import backbones
    d = make("mdprop")
    assert defenses.DEFENSES.get("mdprop").preferred_backbones["28"] == "c2f2bn"
    with pytest.raises(UserError, match="c2f2bn"):
        d.prepare_model(backbones.create("c2f2", embedding_dim=8))
    plain_keys = set(backbones.create("c2f2bn", embedding_dim=8).state_dict())
    m = d.prepare_model(backbones.create("c2f2bn", embedding_dim=8))
    assert set(d.export_model(m).state_dict()) == plain_keys
    fresh = d.prepare_model(backbones.create("c2f2bn", embedding_dim=8))
    fresh.load_state_dict(m.state_dict())  # strict: prepared state loads into a freshly prepared model
    plain = backbones.create("c2f2bn", embedding_dim=8)
    plain.load_state_dict(d.export_model(m).state_dict())
    xs = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    m.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(m(xs), plain(xs))


def test_ms_loss_matches_pytorch_metric_learning():
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        emb = torch.randn(16, 5, generator=g, dtype=torch.float64)
        y = torch.randint(4, (8,), generator=g).repeat_interleave(2)
        oracle = MultiSimilarityLoss(alpha=2, beta=40, base=0.5)
        assert float(multi_similarity_loss(emb, y, margin=None)) == pytest.approx(float(oracle(emb, y)), rel=1e-9)
        pairs = MultiSimilarityMiner(epsilon=0.1)(emb, y)
        mined_anchors = set(pairs[0].tolist()) & set(pairs[2].tolist())
        if mined_anchors != set(range(16)):  # both sides mined for every anchor: then the two agree exactly
            continue
        assert float(multi_similarity_loss(emb, y)) == pytest.approx(float(oracle(emb, y, pairs)), rel=1e-9)
    # hand value: two classes of two, orthogonal embeddings (s = 0 off the diagonal)
    emb = torch.eye(4, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    manual = 0.5 * math.log(1 + math.exp(1.0)) + math.log(1 + 2 * math.exp(-20.0)) / 40
    assert float(multi_similarity_loss(emb, y, margin=None)) == pytest.approx(manual, rel=1e-12)


# ---------------------------------------------------------------- state, DDP wrapper, smoke

def test_hm_state_round_trip_is_exact():
    x, y = data()
    d, w, inner = prepared("hm")
    assert d.state_dict() == {"prev_loss": 2.0}
    step(d, w, x, y)
    saved = d.state_dict()
    assert saved["prev_loss"] != 2.0
    a = _scalar(step(d, w, x, y, ctx(seed=9)).loss)
    other = make("hm")
    other.load_state_dict(saved)
    assert _scalar(step(other, Wrapper(inner), x, y, ctx(seed=9)).loss) == a
    with pytest.raises(ValueError):
        other.load_state_dict({"prev": 1.0})


@pytest.mark.parametrize("name", PGD_DEFENSES)
def test_attacks_use_the_unwrapped_module(name):
    d, w, inner = prepared(name)
    x, y = data()
    step(d, w, x, y)
    assert [training for _, training in w.calls] == [True]


@pytest.mark.parametrize("name", ALL_DEFENSES)
def test_smoke_two_adam_steps_on_c2f2(name):
    from robustbench_dml import backbones
    torch.manual_seed(0)
    model = backbones.create("c2f2bn" if name == "mdprop" else "c2f2", embedding_dim=16)
    d = defenses.create(name, preset="28", **({} if name == "vanilla" else {"steps": 2}))
    model = d.prepare_model(model)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g)
    y = torch.arange(4).repeat_interleave(2)
    for s in range(2):
        d.train_mode(model)
        r = d.training_step(model, x, y, StepContext(epoch=1, max_epochs=2, global_step=s, generator=g,
                                                     dataset="digits"))
        assert math.isfinite(_scalar(r.loss))
        opt.zero_grad()
        r.loss.backward()
        opt.step()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(d.export_model(model).state_dict()) == set(backbones.create(
        "c2f2bn" if name == "mdprop" else "c2f2", embedding_dim=16).state_dict())


@pytest.mark.parametrize("bn_live", [True, False])
def test_est_clean_forward_updates_bn_statistics_in_train_mode(bn_live):
    """The reference's clean forward runs in train mode, so with live BN the running mean takes two EMA updates
    per step (clean, then adversarial); with no attack steps both batches are the clean one."""
    x, y = data()
    d, w, inner = prepared("est", bn=True, defense=make("est", steps=0, bn_live=bn_live))
    rm0 = inner.bn.running_mean.clone()
    mu = inner.conv(x).detach().mean(dim=(0, 2, 3))
    r = step(d, w, x, y)
    m = inner.bn.momentum
    want = (1 - m) ** 2 * rm0 + (1 - (1 - m) ** 2) * mu if bn_live else rm0
    assert torch.allclose(inner.bn.running_mean, want, atol=1e-12)
    assert r.n_forward == 2 + int(bn_live)
