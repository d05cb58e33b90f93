"""Retrieval metrics against brute-force numpy references, hand-computed values and pytorch-metric-learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustbench_dml.metrics import kmeans_assign, nmi_score, retrieval_metrics

KEYS = ("R@1", "R@2", "mAP", "MAP@R", "mAP@10")


def _brute(emb: np.ndarray, lab: np.ndarray, ks=(1, 2)) -> dict[str, float]:
    """Full float64 distance matrix, Python sort by (distance, index), definitions straight from the papers."""
    e = emb.astype(np.float64)
    d = np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))
    n = len(lab)
    out: dict[str, list[float]] = {f"R@{k}": [] for k in ks} | {"mAP": [], "MAP@R": [], "mAP@10": []}
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j))
        rel = np.array([lab[j] == lab[i] for j in order], dtype=float)
        r = int(rel.sum())
        if r == 0:
            continue
        prec = np.cumsum(rel) / np.arange(1, n)
        for k in ks:
            out[f"R@{k}"].append(rel[:k].max())
        out["mAP"].append((prec * rel).sum() / r)
        out["MAP@R"].append((prec[:r] * rel[:r]).sum() / r)
        out["mAP@10"].append((prec[:10] * rel[:10]).sum() / 10)
    return {k: 100 * float(np.mean(v)) for k, v in out.items()}


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng, n, classes, dim=8, spread=0.6):
    lab = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, dim))
    return _unit(centers[lab] + spread * rng.normal(size=(n, dim))), lab


CASES = {
    "random": lambda rng: (_unit(rng.normal(size=(90, 6))), rng.integers(0, 7, 90)),
    "clustered": lambda rng: _clustered(rng, 120, 6),
    "singletons": lambda rng: (_unit(rng.normal(size=(50, 4))), rng.integers(0, 40, 50)),  # lone queries
    "collapsed": lambda rng: (np.full((70, 8), 8 ** -0.5, np.float32), rng.integers(0, 4, 70)),
    "duplicates": lambda rng: (np.repeat(_unit(rng.normal(size=(20, 5))), 4, axis=0), rng.integers(0, 5, 80)),
}


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_bruteforce(case, backend):
    emb, lab = CASES[case](np.random.default_rng(0))
    got = retrieval_metrics(torch.from_numpy(emb), lab, backend=backend, nmi=False)
    ref = _brute(emb, lab)
    for key in KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    assert set(got) == set(KEYS) | {"NMI"} and math.isnan(got["NMI"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_recall_alone_is_the_brute_force_recall(case):
    """``maps=False`` (training's per-epoch R@1) searches only max(ks) neighbours: the same R@k, no mAP values."""
    emb, lab = CASES[case](np.random.default_rng(1))
    got = retrieval_metrics(emb, lab, ks=(1, 3), nmi=False, maps=False)
    ref = _brute(emb, lab, ks=(1, 3))
    assert got["R@1"] == pytest.approx(ref["R@1"], abs=1e-9) and got["R@3"] == pytest.approx(ref["R@3"], abs=1e-9)
    assert all(math.isnan(got[k]) for k in ("mAP", "MAP@R", "mAP@10"))


def test_exact_map_needs_positives_beyond_the_knn_depth():
    """Two classes of 30: K = 29 neighbours cannot hold every positive, so the full pass is exercised."""
    rng = np.random.default_rng(5)
    emb = _unit(rng.normal(size=(60, 3)))
    lab = np.repeat([0, 1], 30)
    got = retrieval_metrics(emb, lab, nmi=False, ks=(1, 2, 5))
    ref = _brute(emb, lab, ks=(1, 2, 5))
    for key in ("R@5",) + KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key


def test_hand_computed_values():
    """1-D points 0, 1, 3, 4, 10 with labels a a b a b (exact in float32). Query-by-query:
    q0 order 1(a) 3(b) 4(a) 10(b): P = {1, 4}; AP = (1/1 + 2/3)/2 = 5/6; MAP@R (R=2) = 1/2; mAP@10 = (1 + 2/3)/10
    q1 order 0(a) 3(b) 4(a) 10(b): same as q0.
    q3 order 4(a) 1(a) 0(a) 10(b): P = {10}; AP = 1/4; MAP@R (R=1) = 0; mAP@10 = (1/4)/10
    q4 order 3(b) 1(a) 0(a) 10(b): P = {0, 1}; AP = (1/2 + 2/3)/2 = 7/12; MAP@R (R=2) = (1/2)/2; mAP@10 = (1/2 + 2/3)/10
    q10 order 4(a) 3(b) 1 0: P = {3}; AP = 1/2; MAP@R = 0; mAP@10 = (1/2)/10
    """
    emb = np.array([[0.0], [1.0], [3.0], [4.0], [10.0]], np.float32)
    lab = np.array([0, 0, 1, 0, 1])
    got = retrieval_metrics(emb, lab, nmi=False, normalize=False)  # Euclidean on the points as given
    assert got["R@1"] == pytest.approx(100 * 2 / 5)
    assert got["R@2"] == pytest.approx(100 * 4 / 5)
    assert got["mAP"] == pytest.approx(100 * (5 / 6 + 5 / 6 + 1 / 4 + 7 / 12 + 1 / 2) / 5)
    assert got["MAP@R"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1 / 4) / 5)
    assert got["mAP@10"] == pytest.approx(100 * ((5 / 3) + (5 / 3) + 1 / 4 + 7 / 6 + 1 / 2) / 10 / 5)


def test_raw_embeddings_are_normalised_by_default():
    """Metric N: rows scaled by arbitrary positive factors rank as their unit vectors; normalize=False measures
    the raw Euclidean distances, which here rank differently."""
    rng = np.random.default_rng(2)
    unit, lab = _clustered(rng, 200, 5, dim=8, spread=0.9)
    scaled = unit * rng.uniform(0.1, 10.0, size=(200, 1)).astype(np.float32)
    ref = _brute(unit, lab)
    got = retrieval_metrics(scaled, lab, nmi=False)
    for key in KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-6), key
    raw = retrieval_metrics(scaled, lab, nmi=False, normalize=False)
    assert raw["mAP"] != pytest.approx(ref["mAP"], abs=1e-3)


def test_collapsed_identical_on_backends():
    rng = np.random.default_rng(1)
    emb = np.full((120, 16), 0.25, np.float32)
    lab = rng.integers(0, 5, 120)
    a = retrieval_metrics(torch.from_numpy(emb), lab, backend="faiss")
    b = retrieval_metrics(torch.from_numpy(emb), lab, backend="torch")
    assert a == b


def test_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    for maker in (lambda r: (_unit(r.normal(size=(400, 16))), r.integers(0, 12, 400)),
                  lambda r: _clustered(r, 500, 10, dim=16, spread=0.8)):
        emb, lab = maker(np.random.default_rng(3))
        x, y = torch.from_numpy(emb), torch.from_numpy(lab)
        ours = retrieval_metrics(x, y, seed=7)
        calc = pml.AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r", "mean_average_precision", "NMI"),
            k="max_bin_count",
            kmeans_func=lambda e, n: torch.from_numpy(kmeans_assign(e, n, seed=7)))
        theirs = calc.get_accuracy(x, y)
        assert ours["R@1"] == pytest.approx(100 * theirs["precision_at_1"], abs=1e-6)
        assert ours["MAP@R"] == pytest.approx(100 * theirs["mean_average_precision_at_r"], abs=1e-6)
        assert ours["NMI"] == pytest.approx(100 * theirs["NMI"], abs=1e-6)
        assert 0 < ours["NMI"] < 100


def test_nmi_seeded_and_consistent_with_its_clustering():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(2), 30)
    two = _unit(np.eye(2)[lab] * 10 + 0.01 * rng.normal(size=(60, 2)))
    assert nmi_score(two, lab, seed=0) == pytest.approx(100.0)  # two far-apart blobs are recovered
    noisy, lab2 = _clustered(rng, 300, 8, spread=1.5)
    assign = kmeans_assign(noisy, 8, seed=3)
    assert np.array_equal(assign, kmeans_assign(noisy, 8, seed=3))
    assert sorted(np.unique(assign)) == list(range(8))
    assert nmi_score(noisy, lab2, seed=3) == pytest.approx(100 * normalized_mutual_info_score(lab2, assign))
    assert nmi_score(noisy, assign, seed=3) == pytest.approx(100.0)


def test_truncated_map_and_query_subset():
    emb, lab = _clustered(np.random.default_rng(2), 150, 3, spread=1.0)
    exact = retrieval_metrics(emb, lab, nmi=False)
    trunc = retrieval_metrics(emb, lab, nmi=False, map_max_rank=20)
    assert trunc["mAP"] < exact["mAP"]  # positives beyond rank 20 dropped: a strict lower bound here
    assert trunc["MAP@R"] == exact["MAP@R"]
    assert retrieval_metrics(emb, lab, nmi=False, map_max_rank=149)["mAP"] == pytest.approx(exact["mAP"])
    sub = retrieval_metrics(emb, lab, nmi=False, max_queries=40, seed=1)
    assert sub == retrieval_metrics(emb, lab, nmi=False, max_queries=40, seed=1)
    pick = np.sort(np.random.default_rng(1).choice(150, size=40, replace=False))
    # every item has positives here, so the subset is drawn from all 150 rows: check R@1 on it by hand
    d = np.sqrt(((emb[pick, None].astype(np.float64) - emb[None].astype(np.float64)) ** 2).sum(-1))
    d[np.arange(40), pick] = np.inf
    assert sub["R@1"] == pytest.approx(100 * np.mean(lab[d.argmin(1)] == lab[pick]))


def test_no_positive_anywhere_is_nan_and_bad_input_raises():
    got = retrieval_metrics(np.eye(4, dtype=np.float32), np.arange(4), nmi=False)
    assert all(math.isnan(got[k]) for k in KEYS)
    with pytest.raises(ValueError):
        retrieval_metrics(np.eye(4, dtype=np.float32), np.arange(3))
    with pytest.raises(ValueError):
        retrieval_metrics(np.eye(4, dtype=np.float32), np.arange(4), ks=(0,))


def test_entanglement_equals_the_brute_force_ratio_across_blocks_and_subsets():
    from robustbench_dml.metrics import entanglement

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 6, (301,), generator=g)
    z = torch.randn(301, 16, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 16)
    zn = torch.nn.functional.normalize(z.double(), dim=1)
    d = torch.cdist(zn, zn)
    same = (y[:, None] == y[None, :]) & ~torch.eye(301, dtype=torch.bool)
    brute = float(d[same].mean() / d[y[:, None] != y[None, :]].mean())
    assert entanglement(z, y, block=7) == pytest.approx(brute, rel=1e-6)
    assert entanglement(z, y, max_items=200) == pytest.approx(brute, abs=0.02)  # a seeded subset, close
    assert entanglement(z, y, max_items=200, seed=1) != entanglement(z, y, max_items=200, seed=0)


def test_row_sums_and_exact_sums_do_not_depend_on_the_thread_count_or_the_chunking():
    from robustbench_dml.metrics import exact_sum, row_sums

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 200_000, dtype=torch.float64, generator=g)  # one long row is the case torch's sum splits
    sums = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sums[threads] = (row_sums(x[:1]), row_sums(x))
    assert torch.equal(sums[1][0], sums[2][0]) and torch.equal(sums[1][1], sums[2][1])
    assert sums[1][0].item() == pytest.approx(math.fsum(x[0].tolist()), rel=1e-12)
    assert exact_sum(x) == math.fsum(x.reshape(-1).tolist()) == exact_sum(list(x.flip(1).split(777, dim=1)))


def test_benign_metrics_of_a_model_are_bit_identical_at_one_and_two_threads():
    # the whole benign phase: the c2f2 embedding of digits' test split (MKL products, whose sums follow the thread
    # count unless numerics.reproducible_cpu_blas ran first, as dmlbench and this suite's conftest do) and every
    # metric of it
    from robustbench_dml import backbones, datasets
    from robustbench_dml.gallery import embed
    from robustbench_dml.metrics import entanglement

    torch.manual_seed(0)
    model = backbones.create_for_data("c2f2", embedding_dim=64, channels=1)
    data = datasets.create("digits", split="test")
    seen = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        gallery = embed(model, data, batch_size=128)
        values = retrieval_metrics(gallery.embeddings, gallery.labels)
        values["entanglement"] = entanglement(gallery.embeddings, gallery.labels)
        seen[threads] = gallery.embeddings, values
    assert torch.equal(seen[1][0], seen[2][0])
    assert seen[1][1] == seen[2][1]
