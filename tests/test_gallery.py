"""Gallery: exact kNN with one (distance, index) tie order on every backend, exclusion by index, embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_dml.gallery import Gallery, embed, embed_tensor

BACKENDS = ["faiss", "torch"]


def _brute_knn(emb: np.ndarray, queries: np.ndarray, k: int, exclude) -> tuple[np.ndarray, np.ndarray]:
    """float64 distances, Python-sorted by (distance, index): the independent reference order."""
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - emb[None, :, :].astype(np.float64)) ** 2).sum(-1))
    idx, dist = [], []
    for r in range(len(queries)):
        order = sorted((j for j in range(len(emb)) if j != exclude[r]), key=lambda j: (d[r, j], j))[:k]
        idx.append(order)
        dist.append(d[r, order])
    return np.array(idx), np.array(dist)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "duplicates", "coarse_grid"])
def test_knn_matches_bruteforce_stable_order(backend, kind):
    rng = np.random.default_rng(1)
    if kind == "random":
        emb = _unit(rng.normal(size=(257, 12)))
    elif kind == "duplicates":  # every vector 6 times: ties everywhere, order must be by index
        emb = np.repeat(_unit(rng.normal(size=(40, 12))), 6, axis=0)[rng.permutation(240)]
    else:  # small integer vectors: distances sqrt(integer), exact in float32, many equal between distinct rows
        emb = rng.integers(-1, 2, size=(200, 4)).astype(np.float32)
    qi = np.arange(0, len(emb), 5)
    g = Gallery(torch.from_numpy(emb), torch.zeros(len(emb), dtype=torch.int64), backend=backend)
    assert g.backend == backend
    dist, idx = g.knn(torch.from_numpy(emb[qi]), 15, exclude=torch.from_numpy(qi))
    ref_idx, ref_dist = _brute_knn(emb, emb[qi], 15, qi)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(dist.numpy(), ref_dist, atol=1e-6)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    # sorted by (distance, index): non-decreasing distance, increasing index inside equal distances
    d, i = dist.numpy(), idx.numpy()
    assert np.all((d[:, 1:] > d[:, :-1]) | ((d[:, 1:] == d[:, :-1]) & (i[:, 1:] > i[:, :-1])))


def test_collapsed_embeddings_give_first_indices_on_every_backend():
    emb = torch.full((300, 16), 0.25)  # all rows equal and unit norm
    exclude = torch.tensor([0, 3, 299, -1])
    results = {}
    for backend in BACKENDS:
        g = Gallery(emb, torch.arange(300) % 3, backend=backend)
        results[backend] = g.knn(emb[:4], 5, exclude=exclude)
        np.testing.assert_array_equal(results[backend][1].numpy(),
                                      [[1, 2, 3, 4, 5], [0, 1, 2, 4, 5], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
        assert torch.all(results[backend][0] == 0)
    assert torch.equal(results["faiss"][0], results["torch"][0])
    assert torch.equal(results["faiss"][1], results["torch"][1])


def test_raw_faiss_tie_order_differs_but_ours_does_not():
    """Pitfall 8: faiss IndexFlatIP returns collapsed ties in descending ids; Gallery must not."""
    from robustbench_dml.knn import faiss_module

    faiss = faiss_module()
    emb = np.full((50, 8), 8 ** -0.5, dtype=np.float32)
    ip = faiss.IndexFlatIP(8)
    ip.add(emb)
    _, raw = ip.search(emb[:1], 3)
    g = Gallery(torch.from_numpy(emb), torch.zeros(50), backend="faiss")
    _, ours = g.knn(torch.from_numpy(emb[:1]), 3)
    assert ours[0].tolist() == [0, 1, 2]
    assert raw[0].tolist() != [0, 1, 2]  # documents why the re-sort exists (descending on faiss-cpu 1.15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_excluded_by_index_not_by_first_hit(backend):
    rng = np.random.default_rng(2)
    base = _unit(rng.normal(size=(30, 6)))
    emb = np.concatenate([base, base[:5]])  # rows 30..34 duplicate rows 0..4
    g = Gallery(torch.from_numpy(emb), torch.arange(35), backend=backend)
    q = torch.from_numpy(emb[[0, 32, 7]])
    dist, idx = g.knn(q, 2, exclude=torch.tensor([0, 32, 7]))
    # query 0: its duplicate 30 stays (distance 0), itself is gone; query 32: duplicate 2 stays
    assert idx[0, 0].item() == 30 and dist[0, 0].item() == 0.0
    assert idx[1, 0].item() == 2 and dist[1, 0].item() == 0.0
    assert 0 not in idx[0].tolist() and 32 not in idx[1].tolist() and 7 not in idx[2].tolist()
    assert dist[2, 0].item() > 0  # no duplicate for row 7: the first hit is a genuine neighbour
    # without exclusion the query finds itself first (lowest index among its zero-distance copies)
    _, idx_all = g.knn(q, 1)
    assert idx_all[:, 0].tolist() == [0, 2, 7]


def test_knn_rejects_bad_k_and_exclude():
    g = Gallery(torch.eye(4), torch.arange(4))
    with pytest.raises(ValueError):
        g.knn(torch.eye(4), 4, exclude=torch.arange(4))
    with pytest.raises(ValueError):
        g.knn(torch.eye(4), 0)
    with pytest.raises(ValueError):
        g.knn(torch.eye(4), 2, exclude=torch.arange(3))
    with pytest.raises(ValueError):
        Gallery(torch.eye(4), torch.arange(3))


def test_distances_match_cdist_and_are_differentiable():
    rng = np.random.default_rng(3)
    emb = torch.from_numpy(_unit(rng.normal(size=(50, 9))))
    g = Gallery(emb, torch.zeros(50))
    z = emb[:4].clone().requires_grad_(True)  # distance 0 to its own row
    parts = [g.distances(z, s, e) for s, e in g.blocks(4, columns=7)]
    assert [p.shape[1] for p in parts] == [7] * 7 + [1]
    full = torch.cat(parts, 1)
    ref = torch.from_numpy(np.sqrt(((emb[:4, None].double() - emb[None].double()) ** 2).sum(-1).numpy()))
    torch.testing.assert_close(full.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, torch.cdist(emb[:4], emb))
    full.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert g.blocks(4) == [(0, 50)]
    block = torch.cat([g.block_distances(z.detach(), s, e) for s, e in g.blocks(4, columns=7)], 1)
    torch.testing.assert_close(block.double(), ref, atol=1e-5, rtol=0)  # the matrix-product pass agrees


class _Images(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.labels = x, y, y.numpy()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 5))


@pytest.mark.parametrize("train_mode", [True, False])
def test_embed_restores_mode_keeps_parameters_and_is_eval(train_mode):
    model = _model()
    model.train(train_mode)
    model[2].train(not train_mode)  # mixed submodule modes must be restored exactly
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(37) % 4
    gal = embed(model, _Images(x, y), batch_size=10)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm running stats untouched
    model.eval()
    with torch.no_grad():
        ref = F.normalize(model(x), dim=1)
    torch.testing.assert_close(gal.embeddings, ref)
    assert torch.equal(gal.labels, y) and gal.labels.dtype == torch.int64
    assert not gal.embeddings.requires_grad and gal.embeddings.is_contiguous()
    torch.testing.assert_close(gal.embeddings.norm(dim=1), torch.ones(37))
    model.train(train_mode)
    z = embed_tensor(model, x, batch_size=16)
    assert model.training == train_mode
    torch.testing.assert_close(z, gal.embeddings)


def test_embed_rejects_empty_and_bad_batch():
    model = _model()
    with pytest.raises(ValueError):
        embed(model, _Images(torch.rand(0, 1, 4, 4), torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(ValueError):
        embed(model, _Images(torch.rand(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64)), batch_size=0)


def test_backends_agree_on_float_rounded_near_ties():
    """Normalised grid vectors: mathematically equal distances differ by float32 ulps; backends still agree."""
    rng = np.random.default_rng(4)
    emb = torch.from_numpy(_unit(rng.integers(-1, 2, size=(300, 5)).astype(np.float32) + 1e-7))
    qi = torch.arange(0, 300, 7)
    res = [Gallery(emb, torch.zeros(300), backend=b).knn(emb[qi], 20, exclude=qi) for b in BACKENDS]
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 9000])
def test_squared_norms_equal_the_plain_expression_bit_for_bit(n):
    """The gallery's squared norms go through a reusable buffer; every value must be the plain expression's, so
    the distances (and every attack number) are those of a whole-tensor computation."""
    from robustbench_dml.knn import squared_norms

    x = torch.randn(n, 33, generator=torch.Generator().manual_seed(n))
    assert torch.equal(squared_norms(x), (x * x).sum(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_lists_with_many_near_ties_keep_the_canonical_order(backend):
    """The search computes canonical distances only inside runs of near-ties (here about half of all neighbours,
    as on a trained 512-d model); its lists must equal sorting every item by (canonical distance, index)."""
    from robustbench_dml.knn import FlatIndex, canonical_distances

    gen = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(10, 64, generator=gen), dim=1)
    emb = torch.nn.functional.normalize(centres.repeat(60, 1) + 0.3 * torch.randn(600, 64, generator=gen), dim=1)
    emb[100:110] = emb[5]  # exact duplicates too
    q = torch.arange(0, 600, 9)
    d, i = FlatIndex(emb, backend).search(emb[q], 250, exclude=q)
    full = canonical_distances(emb[q], emb.expand(len(q), -1, -1))
    full[torch.arange(len(q)), q] = float("inf")
    order = torch.argsort(full, dim=1, stable=True)[:, :250]  # stable: equal distances by index
    assert torch.equal(i, order) and torch.equal(d, full.gather(1, order))
    none, again = FlatIndex(emb, backend).search(emb[q], 250, exclude=q, distances=False)
    assert none is None and torch.equal(again, i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_relevance_search_gives_the_canonical_labels_at_every_place_for_less(backend, monkeypatch):
    """With ``relevance`` the search leaves runs of near-ties whose members are all of the query's label (or none
    of them) in coarse order: the same items at the k places, the same label-match at every place as sorting every
    item by (canonical distance, index), and fewer canonical distances computed."""
    from robustbench_dml import knn
    from robustbench_dml.knn import FlatIndex, canonical_distances

    gen = torch.Generator().manual_seed(5)
    centres = torch.nn.functional.normalize(torch.randn(6, 32, generator=gen), dim=1)
    emb = torch.nn.functional.normalize(centres.repeat(100, 1) + 0.3 * torch.randn(600, 32, generator=gen), dim=1)
    emb[200:215] = emb[7]  # exact duplicates: a run that must be ordered by index where it decides
    labels = torch.randint(6, (600,), generator=gen)  # labels half-tied to the clusters: mixed and uniform runs
    labels[:300] = torch.arange(300) % 6
    q, k = torch.arange(0, 600, 7), 180
    full = canonical_distances(emb[q], emb.expand(len(q), -1, -1))
    full[torch.arange(len(q)), q] = float("inf")
    order = torch.argsort(full, dim=1, stable=True)[:, :k]
    computed = []

    def counting(a, b):
        computed.append(b.shape[0] * b.shape[1])
        return canonical_distances(a, b)

    monkeypatch.setattr(knn, "canonical_distances", counting)
    _, plain = FlatIndex(emb, backend).search(emb[q], k, exclude=q, distances=False)
    work_plain, computed[:] = sum(computed), []
    _, fast = FlatIndex(emb, backend).search(emb[q], k, exclude=q, distances=False, relevance=(labels[q], labels))
    assert torch.equal(plain, order)
    assert torch.equal(labels[fast] == labels[q][:, None], labels[order] == labels[q][:, None])
    assert torch.equal(fast.sort(1).values, order.sort(1).values)  # the same k items
    assert 0 < sum(computed) < work_plain


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_search_over_presorted_keys_equals_the_coarse_search(backend):
    """``presorted`` (every distance of the queries, as :meth:`FlatIndex.full_keys` sorted) replaces the coarse
    search; the lists must be those of sorting every item by (canonical distance, index), with and without
    ``relevance``, including rows whose k-th place sits in a run of duplicates (the boundary re-check)."""
    from robustbench_dml.knn import FlatIndex, canonical_distances, sort_values

    gen = torch.Generator().manual_seed(8)
    centres = torch.nn.functional.normalize(torch.randn(5, 32, generator=gen), dim=1)
    emb = torch.nn.functional.normalize(centres.repeat(80, 1) + 0.3 * torch.randn(400, 32, generator=gen), dim=1)
    emb[100:140] = emb[3]  # 40 duplicates of item 3: query 3's 30th place is inside them
    labels = torch.arange(400) % 5
    q, k = torch.cat([torch.tensor([3]), torch.arange(1, 400, 11)]), 30
    index = FlatIndex(emb, backend)
    keys = index.full_keys(emb[q], q)
    assert keys.shape == (len(q), 400) and bool((keys[torch.arange(len(q)), q] >> 32 == 0x7F800000).all())
    keys = sort_values(keys)
    full = canonical_distances(emb[q], emb.expand(len(q), -1, -1))
    full[torch.arange(len(q)), q] = float("inf")
    order = torch.argsort(full, dim=1, stable=True)[:, :k]
    _, plain = index.search(emb[q], k, exclude=q, distances=False, presorted=keys)
    _, fast = index.search(emb[q], k, exclude=q, distances=False, relevance=(labels[q], labels), presorted=keys)
    assert torch.equal(plain, order) and torch.equal(plain[0], torch.arange(100, 130))
    assert torch.equal(labels[fast] == labels[q][:, None], labels[order] == labels[q][:, None])
