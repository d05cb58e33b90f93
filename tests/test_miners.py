"""SPC-2 miners checked against brute-force definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from defenses.miners import MINERS, ghard_margin, ghard_miner, semihard_miner

ALL = MINERS.list()  # every registered miner


def batch(n_pairs=6, dim=5, n_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(2 * n_pairs, dim, generator=g, dtype=torch.float64)
    cls = torch.randint(n_classes, (n_pairs,), generator=g)
    return emb, cls.repeat_interleave(2)


def dist(emb):
    z = F.normalize(emb, dim=1)
    return torch.cdist(z, z)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapes_labels_and_determinism(name, seed):
    emb, y = batch(seed=seed)
    assert bool((y[0::2] == y[1::2]).all())  # SPC-2 layout
    anc, pos, neg = MINERS.get(name)(emb, y, torch.Generator().manual_seed(7))
    assert anc.tolist() == list(range(0, len(y), 2))
    assert len(pos) == len(neg) == len(anc)
    assert bool((y[pos] == y[anc]).all())
    for i, a in enumerate(anc.tolist()):
        if bool((y != y[a]).any()):
            assert y[neg[i]] != y[a], (name, i)
    again = MINERS.get(name)(emb, y, torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip((anc, pos, neg), again))
    # metric N: scaling the raw embeddings changes nothing
    scaled = MINERS.get(name)(emb * 3.7, y, torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip((anc, pos, neg), scaled))


@pytest.mark.parametrize("name", ["random", "semihard", "distance", "hard", "ghard"])
def test_positive_is_the_pair_partner(name):
    emb, y = batch(seed=3)
    _, pos, _ = MINERS.get(name)(emb, y, torch.Generator().manual_seed(0))
    assert pos.tolist() == list(range(1, len(y), 2))


@pytest.mark.parametrize("name", ALL)
def test_single_class_batch_falls_back(name):
    emb, _ = batch(n_pairs=3)
    y = torch.zeros(6, dtype=torch.long)
    anc, pos, neg = MINERS.get(name)(emb, y, torch.Generator().manual_seed(0))
    assert len(neg) == 3 and bool(((neg >= 0) & (neg < 6)).all())


def test_semihard_picks_from_the_band_or_falls_back():
    for seed in range(6):
        emb, y = batch(n_pairs=8, seed=seed)
        d = dist(emb)
        for margin in (0.2, 1.0):
            anc, pos, neg = semihard_miner(emb, y, torch.Generator().manual_seed(seed), margin=margin)
            for a, p, n in zip(anc.tolist(), pos.tolist(), neg.tolist()):
                band = [j for j in range(len(y))
                        if y[j] != y[a] and d[a, p] < d[a, j] and d[a, p] - d[a, j] + margin > 0]
                if band:
                    assert n in band
                else:
                    assert y[n] != y[a]


def test_semihard_draws_uniformly_over_the_band():
    # anchor 0 (class 0) at angle 0, positive at 0.3 rad; negatives at 0.35, 0.4 (in band) and 2.5 (out)
    ang = torch.tensor([0.0, 0.3, 0.35, 0.36, 0.4, 0.41, 2.5, 2.51], dtype=torch.float64)
    emb = torch.stack([ang.cos(), ang.sin()], 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(8)
    for _ in range(600):
        counts[semihard_miner(emb, y, g)[2][0]] += 1
    assert counts[[0, 1, 6, 7]].sum() == 0
    assert bool((counts[2:6] > 100).all())  # each in-band item gets ~150 of 600


def test_softhard_conditions_brute_force():
    for seed in range(6):
        emb, y = batch(n_pairs=8, n_classes=3, seed=seed)
        d = dist(emb)
        anc, pos, neg = MINERS.get("softhard")(emb, y, torch.Generator().manual_seed(seed))
        for a, p, n in zip(anc.tolist(), pos.tolist(), neg.tolist()):
            same = [j for j in range(len(y)) if y[j] == y[a]]
            diff = [j for j in range(len(y)) if y[j] != y[a]]
            max_ap = max(d[a, j] for j in same)
            min_an = min(d[a, j] for j in diff)
            soft_neg = [j for j in diff if d[a, j] < max_ap]
            soft_pos = [j for j in same if d[a, j] > min_an]
            assert n in (soft_neg or diff)
            assert p in (soft_pos or same)  # the fallback may pick the anchor itself


def test_hard_is_nearest_negative():
    for seed in range(4):
        emb, y = batch(n_pairs=7, seed=seed)
        d = dist(emb)
        anc, _, neg = MINERS.get("hard")(emb, y, torch.Generator())
        for a, n in zip(anc.tolist(), neg.tolist()):
            diff = [j for j in range(len(y)) if y[j] != y[a]]
            assert n == min(diff, key=lambda j: (float(d[a, j]), j))


def test_distance_weighted_probabilities():
    # D = 3: 1/q(d) is proportional to 1/d exactly ((D-3)/2 = 0), so P(neg = j) = (1/d_j) / sum_k (1/d_k)
    ang = torch.tensor([0.0, 0.1, 0.5, 0.55, 1.5, 1.6], dtype=torch.float64)
    emb = torch.stack([ang.cos(), ang.sin(), torch.zeros_like(ang)], 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    d = dist(emb)[0, 2:]
    expected = (1 / d) / (1 / d).sum()
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(6, dtype=torch.float64)
    trials = 3000
    for _ in range(trials):
        counts[MINERS.get("distance")(emb, y, g)[2][0]] += 1
    freq = counts[2:] / trials
    assert counts[:2].sum() == 0
    assert torch.allclose(freq, expected, atol=0.03), (freq, expected)


def test_ghard_margin_schedule_and_equivalence():
    assert ghard_margin(0, 10) == pytest.approx(0.2)
    assert ghard_margin(10, 10) == pytest.approx(0.05)
    assert ghard_margin(5, 10) == pytest.approx(0.2 * 0.75 ** 2)
    emb, y = batch(n_pairs=8, seed=5)
    for e in (0, 3, 8):
        a = ghard_miner(emb, y, torch.Generator().manual_seed(2), epoch=e, max_epochs=8)
        b = semihard_miner(emb, y, torch.Generator().manual_seed(2), margin=0.2 * (1 - e / 16) ** 2)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert a[1].tolist() == list(range(1, 16, 2))
    assert not math.isclose(ghard_margin(3, 8), 0.2)
