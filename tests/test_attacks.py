"""The attack zoo against their defining properties on the toy setup T (Linear(8,8), 1000-item gallery, metric N).

Expectations come from hand-computed values (§10 items 6-7), dense brute-force reimplementations of each loss
(autograd on full distance matrices) and properties (identity at eps 0, budgets, immutability, determinism).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks
from attacks.base import (
    chunked_extremes,
    chunked_positions,
    chunked_strict_counts,
    sorted_sq_rows,
    sorted_strict_counts,
    place_sums,
    rank_flip_success,
    top_fraction_limit,
    sort_with_prefix,
    sorted_hinge,
    strict_count_sorted,
)
from attacks.gtm import nearest_unmatching, submask_position
from attacks.query import row_hinge_loss
from robustbench_dml.errors import UserError
from robustbench_dml.gallery import Gallery, embed_tensor

IDS = attacks.list_attacks()  # every registered attack, plugins included


class Toy:
    """Setup T: Linear(8,8) model, gallery = embed(1000 x U[0,1]^8), labels randint(10), batch = first 8 items."""

    def __init__(self, n: int = 1000, seed: int = 0, sort_labels: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.model = nn.Linear(8, 8)
        with torch.no_grad():
            self.model.weight.copy_(torch.randn(8, 8, generator=g))
            self.model.bias.copy_(torch.randn(8, generator=g) * 0.1)
        self.images = torch.rand(n, 8, generator=g)
        labels = torch.randint(10, (n,), generator=g)
        self.labels = labels.sort().values if sort_labels else labels
        self.gallery = Gallery(embed_tensor(self.model, self.images), self.labels)

    def attack(self, aid, *, eps=0.1, alpha=0.01, steps=4, seed=1, b=8, **params):
        atk = attacks.create(aid, model=self.model, eps=eps, alpha=alpha, steps=steps, **params)
        return atk(self.images[:b], self.labels[:b], self.gallery, generator=torch.Generator().manual_seed(seed),
                   query_index=torch.arange(b))


@pytest.fixture(scope="module")
def toy() -> Toy:
    return Toy()


def _embed(model, x):
    return F.normalize(model(x), dim=1)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_nine_attacks():
    assert sorted(attacks.list_attacks()) == sorted(IDS)
    with pytest.raises(UserError, match="unknown attack"):
        attacks.create("CA*", model=nn.Linear(2, 2), eps=0.1, alpha=0.1, steps=1)


def test_bad_parameters_are_user_errors(toy):
    with pytest.raises(UserError):
        attacks.create("CA+", model=toy.model, eps=-1, alpha=0.1, steps=1)
    with pytest.raises(UserError):
        attacks.create("QA-", model=toy.model, eps=0.1, alpha=0.1, steps=1, M=0)
    small = Toy(n=50)
    with pytest.raises(UserError, match="at least 100"):
        small.attack("CA-")


# ---------------------------------------------------------------------------- §10.6 / §10.7 rank arithmetic


def test_ca_rank_arithmetic_hand_example():
    # E metric, D=1: gallery {0,1,2,3}, query Q=0 -> B = {0,1,2,3}; candidate at 2.5 -> A = 2.5
    srt, prefix = sort_with_prefix(torch.tensor([[3.0, 1.0, 0.0, 2.0]]))
    a = torch.tensor([2.5], requires_grad=True)
    loss, cnt = sorted_hinge(a, srt, prefix, "+")
    assert cnt.tolist() == [3] and cnt.item() / 4 == 0.75
    assert loss.item() == pytest.approx(1.125)  # (2.5 + 1.5 + 0.5 + 0) / 4
    loss.sum().backward()
    assert a.grad.item() == pytest.approx(3 / 4)  # d/dA = #{B < A} / N
    # a candidate exactly at 2 ranks 2: the tie is not counted
    assert strict_count_sorted(srt, torch.tensor([2.0])).tolist() == [2]
    # CA-: mean max(0, B - A) at A = 2.5 -> 0.5 / 4, gradient -#{B > A}/N
    a2 = torch.tensor([2.5], requires_grad=True)
    loss2, _ = sorted_hinge(a2, srt, prefix, "-")
    loss2.sum().backward()
    assert loss2.item() == pytest.approx(0.125) and a2.grad.item() == pytest.approx(-1 / 4)


def test_sorted_hinge_matches_dense_relu():
    g = torch.Generator().manual_seed(3)
    rows = torch.rand(5, 300, generator=g) * 2
    rows[:, :10] = rows[:, 10:11]  # ties
    srt, prefix = sort_with_prefix(rows)
    a = torch.cat([torch.rand(4, generator=g) * 2, rows[4, 10:11]])  # last one sits exactly on a tie
    for sign in "+-":
        a1 = a.clone().requires_grad_(True)
        a2 = a.clone().requires_grad_(True)
        got, cnt = sorted_hinge(a1, srt, prefix, sign)
        diff = (a2.view(-1, 1) - rows) if sign == "+" else (rows - a2.view(-1, 1))
        ref = torch.relu(diff).mean(dim=1)
        assert torch.allclose(got, ref, atol=1e-6)
        got.sum().backward()
        ref.sum().backward()
        assert torch.allclose(a1.grad, a2.grad, atol=1e-7)
        assert cnt.tolist() == (rows < a.view(-1, 1)).sum(dim=1).tolist()


def _line_gallery(points) -> Gallery:
    """A gallery of 1-D embeddings (not normalised): distances are differences of coordinates, exact in float."""
    x = torch.tensor(points, dtype=torch.float32).view(-1, 1)
    return Gallery(x, torch.zeros(len(points), dtype=torch.int64))


def test_qa_rank_arithmetic_hand_example():
    # spec §10 item 7: distance row [0.0, 0.3, 0.1, 0.2] (the query at 0, the items at those coordinates)
    gal, z = _line_gallery([0.0, 0.3, 0.1, 0.2]), torch.zeros(1, 1)
    pos = chunked_positions(gal, z, torch.tensor([[1]]))
    assert pos.tolist() == [[3]] and pos.double().mean().item() / 4 == 0.75
    pos = chunked_positions(gal, z, torch.tensor([[2, 3]]))
    assert pos.tolist() == [[1, 2]] and pos.double().mean().item() / 4 == 0.375
    # ties broken by index, as a stable sort
    tied = _line_gallery([0.5, -0.5, 0.1, 0.5])
    assert chunked_positions(tied, z, torch.tensor([[0, 1, 3]])).tolist() == [[1, 2, 3]]


def test_ca_rank_arithmetic_hand_example():
    # spec §10 item 6: gallery {0, 1, 2, 3}, query Q = 0: a candidate at 2.5 has 3 items strictly closer, one at
    # exactly 2 has 2 (the tie is not counted); leaving the item at 2 out (its own clean copy) removes it
    gal, q = _line_gallery([0.0, 1.0, 2.0, 3.0]), torch.zeros(2, 1)
    assert chunked_strict_counts(gal, q, torch.tensor([[2.5], [2.0]])).tolist() == [3, 2]
    assert chunked_strict_counts(gal, q, torch.tensor([[2.5], [2.0]]), exclude=torch.tensor([2, 2])).tolist() == [2, 2]
    assert sorted_strict_counts(gal, q, torch.tensor([[2.5], [2.0]]), *sorted_sq_rows(gal, q)).tolist() == [3, 2]


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several gallery chunks (of 700 items) in the chunked passes of the attacks."""
    blocks = Gallery.blocks
    monkeypatch.setattr(Gallery, "blocks", lambda self, rows, columns=None: blocks(self, rows, 700))


def test_chunked_positions_and_counts_equal_brute_force(small_chunks):
    g = torch.Generator().manual_seed(4)
    n = 3000  # 5 chunks
    emb = F.normalize(torch.randn(n, 6, generator=g), dim=1)
    emb[100:110] = emb[5]  # duplicates -> exact ties
    gal = Gallery(emb, torch.zeros(n, dtype=torch.int64))
    z = torch.cat([emb[:3], F.normalize(torch.randn(2, 6, generator=g), dim=1)])
    targets = torch.tensor([[105, 7], [2999, 0], [1500, 2], [5, 106], [1, 1]])
    full = torch.cdist(z, emb)
    ranks = torch.stack([torch.argsort(full[i], stable=True).argsort() for i in range(5)])
    assert chunked_positions(gal, z, targets).tolist() == ranks.gather(1, targets).tolist()
    # CA: items strictly closer to q than z is; the candidates include exact copies of gallery items (emb[5] has
    # eleven), which tie them and so do not count, and an item far from every query
    q = emb[[7, 5, 200, 5, 2999]]
    cand = torch.cat([emb[[105, 8, 2999]], F.normalize(torch.randn(2, 6, generator=g), dim=1)])
    brute = (torch.cdist(q.double(), emb.double()) < torch.linalg.vector_norm(q.double() - cand.double(), dim=1)
             .view(-1, 1)).sum(dim=1)
    assert chunked_strict_counts(gal, q, cand).tolist() == brute.tolist()
    assert sorted_strict_counts(gal, q, cand, *sorted_sq_rows(gal, q)).tolist() == brute.tolist()
    # the table of fixed rows, counted against candidates near many items at once (a band of near-ties): the same
    # counts as the pass over the gallery, itself checked against brute force above
    srt, order = sorted_sq_rows(gal, q)
    assert srt.shape == order.shape == (5, n) and bool((srt[:, 1:] >= srt[:, :-1]).all())
    for cand in (emb[[5, 5, 105, 0, 7]], F.normalize(emb[[5, 6, 7, 8, 9]] + 1e-4, dim=1)):
        assert sorted_strict_counts(gal, q, cand, srt, order).tolist() == chunked_strict_counts(gal, q, cand).tolist()


def test_row_hinge_value_and_gradient_equal_dense_autograd(small_chunks):
    g = torch.Generator().manual_seed(5)
    n = 2500
    emb = F.normalize(torch.randn(n, 5, generator=g), dim=1)
    gal = Gallery(emb, torch.zeros(n, dtype=torch.int64))
    z0 = F.normalize(torch.randn(4, 5, generator=g), dim=1)
    cands = emb[torch.randint(n, (4, 3), generator=g)]
    for sign in "+-":
        z1 = z0.clone().requires_grad_(True)
        z2 = z0.clone().requires_grad_(True)
        got = row_hinge_loss(z1, cands, gal, sign)
        a = torch.linalg.vector_norm(z2.unsqueeze(1) - cands, dim=-1)
        b = torch.cdist(z2, emb)
        diff = (a.unsqueeze(2) - b.unsqueeze(1)) if sign == "+" else (b.unsqueeze(1) - a.unsqueeze(2))
        ref = torch.relu(diff).mean(dim=(1, 2))
        assert torch.allclose(got, ref, atol=1e-6)
        with torch.no_grad():  # a search's value, without the gradient's pass: the same bits
            assert torch.equal(row_hinge_loss(z0, cands, gal, sign), got.detach())
        got.sum().backward()
        ref.sum().backward()
        assert torch.allclose(z1.grad, z2.grad, atol=1e-5)


def test_chunked_extremes_equal_brute_force(small_chunks):
    """Farthest other-label item and nearest same-label item per query, ties to the lowest index, over chunks;
    a query whose class has no other member gets -1; excluding self by index, or nothing (-1)."""
    g = torch.Generator().manual_seed(6)
    n = 3000  # 5 chunks
    emb = F.normalize(torch.randn(n, 6, generator=g), dim=1)
    emb[2000:2010] = emb[7]  # duplicates -> exact ties, across chunks
    emb[2500] = -emb[7]      # and two equally far items
    emb[2990] = -emb[7]
    labels = torch.randint(4, (n,), generator=g)
    labels[[7, 2000, 2001]] = 1
    labels[[2500, 2990]] = 2
    labels[11] = 9  # alone in its class
    gal = Gallery(emb, labels)
    q = torch.tensor([7, 11, 2000, 42, 3])
    z = torch.cat([emb[q], F.normalize(torch.randn(1, 6, generator=g), dim=1)])
    y = torch.cat([labels[q], torch.tensor([2])])
    dist = torch.cdist(z, emb)
    same = labels.view(1, -1) == y.view(-1, 1)
    for exclude in (torch.cat([q, torch.tensor([-1])]), None):
        keep = same.clone()
        if exclude is not None:
            rows = (exclude >= 0).nonzero().squeeze(1)
            keep[rows, exclude[rows]] = False
        neg_ref = dist.masked_fill(same, -1.0).argmax(1)  # first index of the maximum
        pos_ref = dist.masked_fill(~keep, float("inf")).argmin(1)
        pos_ref[~keep.any(1)] = -1
        neg, pos = chunked_extremes(gal, z, y, exclude)
        assert neg.tolist() == neg_ref.tolist()
        assert pos.tolist() == pos_ref.tolist()
        assert neg[0] == 2500  # the tie goes to the lower index
        assert pos[1] == (-1 if exclude is not None else 11)  # the lone class has no positive but self


# -------------------------------------------------------------------------------------- §10.1 identity


@pytest.mark.parametrize("aid", IDS)
@pytest.mark.parametrize("steps", [1, 4])
def test_eps_zero_is_the_identity(toy, aid, steps):
    out = toy.attack(aid, eps=0.0, steps=steps)
    assert torch.equal(out.x_adv, toy.images[:8])
    assert set(out.per_query) == set(out.clean)
    for k in out.clean:
        assert torch.equal(out.per_query[k], out.clean[k]), k
    assert not out.success.any()


# ----------------------------------------------------------------------------- §10.2 / 10.5 budgets


@pytest.mark.parametrize("aid", IDS)
def test_feasibility_and_step_budget(toy, aid):
    x = toy.images[:8]
    for eps in (0.1, 77 / 255, 8 / 255):
        out = toy.attack(aid, eps=eps, alpha=0.011764, steps=4)
        assert (out.x_adv - x).abs().max() <= eps + 1e-4
        assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    out = toy.attack(aid, eps=0.3, alpha=3 / 255, steps=4)
    assert (out.x_adv - x).abs().max() <= 12 / 255 + 1e-6  # min(eps, T * alpha), no random start
    assert out.iterations == 4


# ------------------------------------------------------------------------------------ §10.3 moves


@pytest.mark.parametrize("aid,param", [("CA+", "W"), ("CA-", "W"), ("QA+", "M"), ("QA-", "M")])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_candidate_and_query_attacks_move(toy, aid, param, count):
    out = toy.attack(aid, eps=0.1, steps=4, **{param: count})
    assert (out.x_adv - toy.images[:8]).abs().mean() > 1e-3
    sel = next(iter(out.selection.values()))
    assert sel.shape == (8, count)


def test_es_moves_at_least_one_level(toy):
    out = toy.attack("ES", eps=0.1, steps=4)
    assert (out.x_adv - toy.images[:8]).abs().max() >= 1 / 255
    assert (out.per_query["ES:D"] > 0).all()  # §10.11: embshift > 0 for T >= 2


# ---------------------------------------------------------------------------------------- §10.4 FGSM


def _dense_loss(aid, model, x, toy, out):
    """Each attack's loss written densely (full distance matrices, torch autograd), from its docstring."""
    z = _embed(model, x)
    X, y = toy.gallery.embeddings, toy.labels
    sel = out.selection
    b = x.shape[0]
    if aid in ("CA+", "CA-"):
        q = X[sel["sel_queries"]]  # (B, W, D)
        a = torch.linalg.vector_norm(z.unsqueeze(1) - q, dim=-1)
        bb = torch.cdist(q.reshape(-1, q.shape[-1]), X).view(b, q.shape[1], -1)
        d = a.unsqueeze(2) - bb
        return torch.relu(d if aid == "CA+" else -d).mean()
    if aid in ("QA+", "QA-", "GTT"):
        c = X[sel["sel_candidates"]] if aid != "GTT" else X[sel["sel_top1"]].unsqueeze(1)
        a = torch.linalg.vector_norm(z.unsqueeze(1) - c, dim=-1)
        d = a.unsqueeze(2) - torch.cdist(z, X).unsqueeze(1)
        return torch.relu(d if aid == "QA+" else -d).mean()
    if aid == "TMA":
        return (1 - (z * X[sel["sel_target"]]).sum(1)).mean()
    if aid == "ES":
        z0 = _embed(model, x).detach()
        return -torch.linalg.vector_norm(z - (z0 + 1e-7) + 1e-6, dim=1).mean()
    if aid == "LTM":
        dist = torch.cdist(z, X)
        same = y.view(1, -1) == toy.labels[:b].view(-1, 1)
        self_mask = torch.zeros_like(same)
        self_mask[torch.arange(b), torch.arange(b)] = True
        neg = dist.masked_fill(same, -1).max(1).values
        pos = dist.masked_fill(~same | self_mask, float("inf")).min(1).values
        return torch.relu(neg - pos).sum()
    if aid == "GTM":
        return torch.linalg.vector_norm(z - X[sel["sel_target"]], dim=1).mean()
    raise AssertionError(aid)


@pytest.mark.parametrize("aid", IDS)
def test_one_step_is_fgsm_with_the_dense_gradient(toy, aid):
    eps = 0.05
    x = toy.images[:8].clone().requires_grad_(True)
    out = toy.attack(aid, eps=eps, alpha=0.001, steps=1)
    (grad,) = torch.autograd.grad(_dense_loss(aid, toy.model, x, toy, out), x)
    expected = (toy.images[:8] - eps * grad.sign()).clamp(0, 1)
    clear = grad.abs() > 1e-6 * grad.abs().max()
    assert clear.float().mean() > 0.5
    assert torch.equal(out.x_adv[clear], expected[clear])
    moved = (out.x_adv - toy.images[:8]).abs()
    inside = (expected > 0) & (expected < 1)
    assert torch.allclose(moved[clear & inside], torch.full_like(moved[clear & inside], eps), atol=1e-6)


# ------------------------------------------------------------------------------------- §10.8 selections


def test_selection_invariants(toy):
    n = len(toy.gallery)
    k = n // 100
    b = 8
    z0 = toy.gallery.embeddings[:b]
    _, near = toy.gallery.knn(z0, k, exclude=torch.arange(b))
    for aid, key, param in (("CA-", "sel_queries", {"W": 5}), ("QA-", "sel_candidates", {"M": 5})):
        out = toy.attack(aid, **param)
        sel = out.selection[key]
        assert sel.shape == (b, 5)
        assert not (sel == torch.arange(b).view(-1, 1)).any()  # never self
        assert all(set(sel[i].tolist()) <= set(near[i].tolist()) for i in range(b))
    qa = toy.attack("QA-", M=k).selection["sel_candidates"]
    assert all(len(set(r.tolist())) == k for r in qa)  # without replacement: the whole pool
    ca = toy.attack("CA-", W=50).selection["sel_queries"]
    assert any(len(set(r.tolist())) < 50 for r in ca)  # with replacement: repeats happen
    gtt = toy.attack("GTT").selection
    full = torch.cdist(z0, toy.gallery.embeddings)
    full[torch.arange(b), torch.arange(b)] = float("inf")
    order = torch.argsort(full, dim=1, stable=True)
    assert torch.equal(gtt["sel_top1"], order[:, 0]) and torch.equal(gtt["sel_top2"], order[:, 1])


@pytest.mark.parametrize("aid,key", [("CA+", "sel_queries"), ("QA+", "sel_candidates"), ("TMA", "sel_target")])
def test_uniform_targets_cover_the_gallery(toy, aid, key):
    atk = attacks.create(aid, model=toy.model, eps=0.0, alpha=0.0, steps=0)
    z0 = toy.gallery.embeddings[:1].expand(4000, -1)
    sel = atk.select(z0, toy.labels[:1].expand(4000), torch.zeros(4000, dtype=torch.int64), toy.gallery,
                     torch.Generator().manual_seed(0))[key].double()
    n = len(toy.gallery)
    assert sel.min() >= 0 and sel.max() <= n - 1
    # mean of U{0..N-1} is (N-1)/2, sd of the mean ~ 289/sqrt(4000 x W) ~ 4.6
    assert abs(sel.mean().item() - (n - 1) / 2) < 25
    assert len(torch.unique(sel)) > 0.9 * n


# ---------------------------------------------------------------------------- §10.9 clean levels (toy)


def test_clean_levels_match_brute_force(toy):
    b = 8
    dist = torch.cdist(toy.gallery.embeddings[:b], toy.gallery.embeddings)
    dist[torch.arange(b), torch.arange(b)] = float("inf")
    top1 = toy.labels[torch.argsort(dist, dim=1, stable=True)[:, 0]]
    expected = (top1 == toy.labels[:b]).double() * 100
    for aid, key in (("ES", "ES:R"), ("LTM", "LTM"), ("GTM", "GTM")):
        assert torch.equal(toy.attack(aid).clean[key], expected)
    assert (toy.attack("GTT").clean["GTT"] == 100).all()
    out = toy.attack("TMA")
    t = out.selection["sel_target"]
    assert torch.allclose(out.clean["TMA"], (toy.gallery.embeddings[:b] * toy.gallery.embeddings[t]).sum(1).double(),
                          atol=1e-6)


# ---------------------------------------------------------------------- §10.11 ES and the Q1 switch


def test_es_q1_compat_measures_iterate_t_minus_1(toy):
    right = toy.attack("ES", eps=0.1, steps=1)
    compat = toy.attack("ES", eps=0.1, steps=1, robrank_compat=True)
    assert torch.equal(right.x_adv, compat.x_adv)
    assert (right.per_query["ES:D"] > 1e-3).all()
    # reference value: ||z_{T-1} - z0 + 1e-6|| with z_{T-1} = z0 -> 1e-6 * sqrt(D)
    assert torch.allclose(compat.per_query["ES:D"], torch.full((8,), 1e-6 * math.sqrt(8), dtype=torch.float64),
                          rtol=1e-3)
    assert torch.equal(right.per_query["ES:R"], compat.per_query["ES:R"])
    # with several steps the compat value is the embedding shift one step before x_adv: different, smaller-ish
    r4 = toy.attack("ES", eps=0.1, steps=4)
    c4 = toy.attack("ES", eps=0.1, steps=4, robrank_compat=True)
    assert not torch.allclose(r4.per_query["ES:D"], c4.per_query["ES:D"])


# ---------------------------------------------------------------------- §10.16 Q2 (GTM) and Q3 (LTM)


def test_gtm_target_default_and_q2_compat():
    toy = Toy(sort_labels=True)  # class-contiguous gallery, as CUB/SOP
    b = 8
    z0 = toy.gallery.embeddings[:b]
    dist = torch.cdist(z0, toy.gallery.embeddings)
    dist[torch.arange(b), torch.arange(b)] = float("inf")
    predicted = toy.labels[dist.argmin(1)]
    unmatching = toy.labels.view(1, -1) != predicted.view(-1, 1)
    u = dist.masked_fill(~unmatching, float("inf")).argmin(1)
    assert torch.equal(toy.attack("GTM").selection["sel_target"], u)
    # Q2: the argmin inside the masked sub-vector dist[i][unmatching[i]], used as a gallery index
    q2 = torch.tensor([int((unmatching[i, : u[i]]).sum()) for i in range(b)])
    assert torch.equal(toy.attack("GTM", robrank_compat=True).selection["sel_target"], q2)
    assert torch.equal(submask_position(toy.labels, predicted, u), q2)
    assert not torch.equal(q2, u)  # the quirk changes the target
    assert torch.equal(nearest_unmatching(toy.gallery, z0, predicted, torch.arange(b)), u)


def test_ltm_q3_compat_keeps_self_positive(toy, small_chunks):
    b = 8
    z0 = toy.gallery.embeddings[:b]
    y = toy.labels[:b]
    _, pos_right = chunked_extremes(toy.gallery, z0, y, torch.arange(b))
    _, pos_compat = chunked_extremes(toy.gallery, z0, y, None)
    assert torch.equal(pos_compat, torch.arange(b))  # self (distance 0) is the nearest positive
    assert not (pos_right == torch.arange(b)).any()
    dist = torch.cdist(z0, toy.gallery.embeddings)
    same = toy.labels.view(1, -1) == y.view(-1, 1)
    same[torch.arange(b), torch.arange(b)] = False
    assert torch.equal(pos_right, dist.masked_fill(~same, float("inf")).argmin(1))
    right = toy.attack("LTM", eps=0.1, steps=4)
    compat = toy.attack("LTM", eps=0.1, steps=4, robrank_compat=True)
    assert not torch.equal(right.x_adv, compat.x_adv)


# ----------------------------------------------------------------------- §10.13 immutability, determinism


@pytest.fixture(scope="module")
def bn_setup():
    torch.manual_seed(0)
    from robustbench_dml.backbones import create

    model = create("c2f2bn", embedding_dim=16)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(120, 1, 28, 28, generator=g)
    labels = torch.randint(5, (120,), generator=g)
    model.train()
    with torch.no_grad():
        model(images[:64])  # non-trivial running statistics
    gallery = Gallery(embed_tensor(model, images), labels)
    return model, images, labels, gallery


@pytest.mark.parametrize("aid", IDS)
def test_immutability_with_batchnorm(bn_setup, aid):
    model, images, labels, gallery = bn_setup
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    emb, lab = gallery.embeddings.clone(), gallery.labels.clone()
    atk = attacks.create(aid, model=model, eps=0.1, alpha=0.02, steps=2)
    out = atk(images[:6], labels[:6], gallery, generator=torch.Generator().manual_seed(0), query_index=torch.arange(6))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(gallery.embeddings, emb) and torch.equal(gallery.labels, lab)
    assert (out.x_adv - images[:6]).abs().max() > 0
    model.eval()
    atk(images[:2], labels[:2], gallery, generator=torch.Generator().manual_seed(0), query_index=torch.arange(2))
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("aid", IDS)
def test_same_seed_is_bit_identical(toy, aid):
    a = toy.attack(aid, seed=7)
    b = toy.attack(aid, seed=7)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    for k in a.per_query:
        assert torch.equal(a.per_query[k], b.per_query[k])
    for k in a.selection:
        assert torch.equal(a.selection[k], b.selection[k])


def test_self_defaults_to_nearest_item(toy):
    a = toy.attack("GTT")
    atk = attacks.create("GTT", model=toy.model, eps=0.1, alpha=0.01, steps=4)
    b = atk(toy.images[:8], toy.labels[:8], toy.gallery, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_adv, b.x_adv)


def test_candidate_passes_split_by_memory_budget_agree(toy):
    whole = toy.attack("CA+", W=2)
    budget = 2 * 3 * (20 * 2 * 1000 + 1)  # half for the passes: 3 rows each
    assert attacks.create("CA+", model=toy.model, eps=0.1, alpha=0.01, steps=4, W=2,
                          memory_budget=budget).max_rows(1000) == 3
    # passes of 3, 3, 2 rows; and no counting table (8 x 2 x 1000 entries at 16 bytes exceed the other half), so
    # the result is measured by passes over the gallery where the whole batch's is read off its table
    split = toy.attack("CA+", W=2, memory_budget=budget)
    assert torch.equal(whole.selection["sel_queries"], split.selection["sel_queries"])
    assert torch.allclose(whole.x_adv, split.x_adv, atol=1e-6)
    assert torch.equal(whole.per_query["CA+"], split.per_query["CA+"])


# ------------------------------------------------------------------------ §10.15 pixel-space budgets


def test_input_normalisation_layer_keeps_budget_in_pixels():
    from robustbench_dml.backbones import EmbeddingNet, Normalize

    torch.manual_seed(0)
    model = EmbeddingNet(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), embedding_dim=8, input_size=4, in_channels=3,
                         normalize=Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    images = torch.rand(300, 3, 4, 4)
    labels = torch.randint(5, (300,))
    gallery = Gallery(embed_tensor(model, images), labels)
    eps = 8 / 255
    out = attacks.create("ES", model=model, eps=eps, alpha=3 / 255, steps=3)(
        images[:4], labels[:4], gallery, generator=torch.Generator(), query_index=torch.arange(4))
    r = (out.x_adv - images[:4]).abs()
    assert r.max() <= eps + 1e-6 and r.max() >= 3 / 255 - 1e-6  # gradient reached the pixels


# ------------------------------------------------------------------------------------ success flags


def _dense_places(gallery, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based place of gallery item targets[i] in query i's stable ascending ranking (brute force)."""
    d = torch.cdist(z.double(), gallery.embeddings.double())
    order = torch.sort(d, dim=1, stable=True).indices
    return (order == targets.view(-1, 1)).float().argmax(dim=1)


def _reported(places: torch.Tensor, n: int, ulps: int = 0) -> torch.Tensor:
    """CA/QA results as the attacks report them (100 x the mean place / N, float64), moved by ``ulps`` units in the
    last place: what another machine's rounding (reciprocal multiply, FMA, another vector width) could give."""
    p = 100.0 * places.double().mean(dim=1) / n
    for _ in range(abs(ulps)):
        p = torch.nextafter(p, torch.full_like(p, math.inf if ulps > 0 else -math.inf))
    return p


@pytest.mark.parametrize("per_item", [1, 2, 5])
def test_rank_success_rules_are_integer_comparisons_at_every_boundary(per_item):
    # places built directly (no distances), at every boundary of the rules, for many gallery sizes: the top 1% is
    # the first K + 1 places (0-based place <= K = floor(N / 100)), the far half starts at place N / 2 (mean)
    sizes = [100, 101, 199, 200, 896, 999, 1000, 1001, 1337, 4999, 5000, 9999, 10000, 10001, 60502, 123457]
    for n in sizes:
        k = n // 100
        assert top_fraction_limit(n) == k
        half = (n * per_item + 1) // 2  # the least place sum with 2 S >= N W
        sums = torch.tensor([k * per_item, k * per_item + 1, half, half - 1, 0, n * per_item - per_item])
        places = torch.stack([torch.full((per_item,), int(s) // per_item) + (torch.arange(per_item) < int(s) % per_item)
                              for s in sums])  # one row per place sum, the remainder spread over the first places
        assert places.sum(dim=1).tolist() == sums.tolist()
        inside = sums <= k * per_item
        far = 2 * sums >= n * per_item
        assert inside.tolist() == [True, False, half <= k * per_item, half - 1 <= k * per_item, True, False]
        assert far.tolist()[:4] == [2 * k * per_item >= n * per_item, 2 * (k * per_item + 1) >= n * per_item, True, False]
        for ulps in (-3, 0, 3):
            got = _reported(places, n, ulps)
            assert torch.equal(place_sums(got, n, per_item), sums), (n, ulps)
            last = _reported(places[5:6].expand(len(sums), -1), n, ulps)  # the last places: outside and far
            first = _reported(places[4:5].expand(len(sums), -1), n, ulps)  # place 0: inside
            assert torch.equal(rank_flip_success("-", got, last, n, per_item), inside), (n, ulps)  # pushed far
            assert torch.equal(rank_flip_success("+", last, got, n, per_item), inside), (n, ulps)  # pulled in
            assert torch.equal(rank_flip_success("-", first, got, n, per_item), far), (n, ulps)
            assert not rank_flip_success("+", got, got, n, per_item).any()  # nothing moved, nothing broken


@pytest.mark.parametrize("aid", ["QA+", "QA-"])
def test_query_attack_success_matches_brute_force_places(aid):
    # N = 896 is a gallery size where K / N * 100 rounds below 100 K / N: a candidate at place K must count as
    # inside the top 1% (the first K + 1 places)
    toy = Toy(n=896, seed=3)
    b = 96
    out = toy.attack(aid, eps=0.3, alpha=0.05, steps=6, b=b)
    cand = out.selection["sel_candidates"][:, 0]
    z_adv = _embed(toy.model, out.x_adv)
    k = 8
    clean_in = _dense_places(toy.gallery, toy.gallery.embeddings[:b], cand) <= k
    adv_place = _dense_places(toy.gallery, z_adv, cand)
    adv_in = adv_place <= k
    adv_far = adv_place >= 448  # the far half: at or beyond 50% of the 896 places
    expected = (~clean_in & adv_in) if aid == "QA+" else (clean_in & adv_far)
    assert torch.equal(out.success, expected)
    if aid == "QA-":  # the boundary case is exercised: some candidates start at place K exactly
        assert bool((_dense_places(toy.gallery, toy.gallery.embeddings[:b], cand) == k).any())
        # and the far-half rule is stricter than leaving the top 1%: both kinds of pushed candidate occur
        assert out.success.any() and (clean_in & ~adv_in & ~adv_far).any()


@pytest.mark.parametrize("aid", ["CA+", "CA-"])
def test_candidate_attack_success_matches_brute_force_counts(aid):
    toy = Toy(n=896, seed=5)
    b = 96
    out = toy.attack(aid, eps=0.3, alpha=0.05, steps=6, b=b)
    q = toy.gallery.embeddings[out.selection["sel_queries"][:, 0]].double()
    g = toy.gallery.embeddings.double()

    def percent(c):  # 100 x #{x : d(X_x, Q) < d(c, Q)} / N, the candidate's strict place in its query's ranking
        a = torch.linalg.vector_norm(c.double() - q, dim=1)
        dist = torch.linalg.vector_norm(g.unsqueeze(0) - q.unsqueeze(1), dim=2)  # the same formula: self ties itself
        return 100.0 * (dist < a.view(-1, 1)).sum(dim=1).double() / 896

    clean, adv = percent(toy.gallery.embeddings[:b]), percent(_embed(toy.model, out.x_adv))
    inside = lambda p: p <= 100.0 * 8 / 896
    expected = (~inside(clean) & inside(adv)) if aid == "CA+" else (inside(clean) & (adv >= 50.0))
    assert torch.equal(out.success, expected)
    assert out.success.any()
    if aid == "CA-":  # candidates pushed out of the top 1% but not to the far half do not count
        assert (inside(clean) & ~inside(adv) & (adv < 50.0)).any()


@pytest.mark.parametrize("aid", ["ES", "LTM", "GTM"])
def test_recall_success_means_the_class_left_the_top_percent(aid):
    toy = Toy(n=1000, seed=4)
    b = 64
    out = toy.attack(aid, eps=0.5, alpha=0.1, steps=6, b=b)
    z_adv = _embed(toy.model, out.x_adv)
    d = torch.cdist(z_adv.double(), toy.gallery.embeddings.double())
    d[torch.arange(b), torch.arange(b)] = float("inf")  # self excluded by index
    near = torch.sort(d, dim=1, stable=True).indices[:, :11]  # K + 1 = floor(0.01 * 1000) + 1 places
    kept = (toy.labels[near] == toy.labels[:b].view(-1, 1)).any(dim=1)
    key = "ES:R" if aid == "ES" else aid
    clean_correct = out.clean[key] > 0
    assert torch.equal(out.success, clean_correct & ~kept)
    flipped = clean_correct & ~(out.per_query[key] > 0)
    assert not (out.success & ~flipped).any()  # stricter than the top-1 flip, never looser
    assert out.success.any() and (flipped & ~out.success).any()  # both kinds of flipped query occur here
