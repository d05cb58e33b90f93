"""Benign retrieval metrics on one set of embeddings, each item querying all the others (self excluded by index).

Every item is a query against the gallery of all items; its own row is excluded *by index* (duplicates of it
stay in the gallery). Ranks follow the total order (Euclidean distance, gallery index), the same on every kNN
backend (``robustbench_dml.knn``). Queries whose class has no other member are left out of the kNN metrics
(as pytorch-metric-learning's AccuracyCalculator does); if none remain those metrics are NaN. All values are
percent (0-100).

* ``R@k``: percent of queries with a same-class item among their k nearest (RobRank ``r@k``, PML
  ``precision_at_1`` for k = 1).
* ``mAP``: mean over queries of the average precision over *all* same-class items of the gallery,
  ``AP = (1/|P|) sum_{p in P} (#positives ranked <= rank(p)) / rank(p)`` (RobRank ``mAP``).
* ``MAP@R``: "A Metric Learning Reality Check" (Musgrave et al., ECCV'20), ``R = |P|`` = class size - 1:
  ``(1/R) sum_{i<=R} rel_i * P@i`` (PML ``mean_average_precision_at_r``).
* ``mAP@10``: RobRank's "mAP@R" with a fixed R = 10 (quirk Q8 of ``docs/protocol.md``):
  ``(1/10) sum_{i<=10} rel_i * P@i``; note the fixed 1/10 normalisation (a query with fewer than 10 positives
  cannot reach 100).
* ``NMI``: sklearn NMI between the labels and a seeded k-means (faiss ``Kmeans(niter=20, seed=seed)``, or
  sklearn ``KMeans(random_state=seed)`` without faiss) with k = number of classes, on all embeddings.

Cost. The kNN metrics need the K = max(max(ks), 10, largest class - 1) nearest neighbours of every query, and
exact ``mAP`` the rank of every positive, so every distance is needed: one pass per chunk of queries computes
their full rows of float32 expansion distances (|q|^2 + |g|^2 - 2 q.g, one matrix product, O(N^2 D) time,
O(rows * N) memory in blocks of ~16M keys), sorts each row's (distance, index) keys once, and reads off both the
kNN search's candidates (then ordered canonically, ``robustbench_dml.knn``) and each far positive's rank (a
positive inside the K nearest keeps its exact kNN rank). ``map_max_rank=r`` replaces exact mAP by truncated AP
(positives ranked beyond r count 0; a lower bound) and the pass by a plain K-nearest search; so does ``maps=False``
(R@k alone). ``max_queries`` scores a seeded random subset of queries against the full gallery (for very large N).
Measured on Fashion-MNIST's 10,000 x 10,000 (512-d, 2 idle cores): a whole ``dmlbench evaluate --benign-only``
process (NMI and the class distances included) takes 1.37x a plain process that embeds, runs one faiss search and
computes R@1 and MAP@R (``benchmarks/bench_evaluate.py``).

Sums: each query's values are summed in float64 in one fixed order and the totals exactly (``math.fsum``), so a
metric of given embeddings is the same float at any thread count, chunking or number of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robustbench_dml.knn import (FlatIndex, argsort_unique, block_rows, candidate_count, faiss_module,
                                 sort_values)

# the (rows, N) rows of keys behind mAP's exact ranks: 128 MiB of int64 (plus 64 MiB of distances on the way)
_FULL_ROWS_ELEMENTS = 1 << 24
_INT64_MAX = torch.iinfo(torch.int64).max


def kmeans_assign(embeddings, n_clusters: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Seeded k-means cluster ids (N,) int64: faiss ``Kmeans`` when installed, else sklearn ``KMeans``."""
    x = np.ascontiguousarray(_to_numpy(embeddings), dtype=np.float32)
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of points ({len(x)})")
    faiss = faiss_module()
    if faiss is not None:
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, verbose=False,
                          min_points_per_centroid=1,
                          max_points_per_centroid=max(256, math.ceil(len(x) / n_clusters)))
        km.train(x)
        _, assign = km.index.search(x, 1)
        return assign[:, 0].astype(np.int64)
    from sklearn.cluster import KMeans  # pragma: no cover - faiss is a dependency

    return KMeans(n_clusters, random_state=seed, n_init=1, max_iter=niter).fit_predict(x).astype(np.int64)


def nmi_score(embeddings, labels, seed: int = 0) -> float:
    """NMI (percent) between ``labels`` and seeded k-means with k = number of classes."""
    from sklearn.metrics import normalized_mutual_info_score

    y = _to_numpy(labels).reshape(-1)
    assign = kmeans_assign(embeddings, len(np.unique(y)), seed)
    return 100.0 * float(normalized_mutual_info_score(y, assign))


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Row sums (B,) of a (B, K) tensor in float64, accumulated left to right (the last column of a cumulative sum):
    one order whatever the thread count (torch's ``sum`` splits a row among threads when it is the only row)."""
    return x.to(torch.float64).cumsum(dim=1)[:, -1] if x.shape[1] else x.new_zeros(x.shape[0], dtype=torch.float64)


def exact_sum(parts) -> float:
    """The correctly rounded sum of every value of a tensor or a list of tensors (``math.fsum``): the same float
    whatever the order, the chunking or the thread count that produced the parts."""
    if isinstance(parts, torch.Tensor):
        parts = [parts]
    return math.fsum(v for p in parts for v in p.detach().reshape(-1).to("cpu", torch.float64).tolist())


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _class_members(labels: torch.Tensor):
    """Per-item class size and a padded (C, maxcount) table of member indices (ascending, -1 padding)."""
    uniq, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    maxc = int(counts.max())
    pos = torch.arange(len(labels), device=labels.device) - starts[inv[order]]
    table = torch.full((len(uniq), maxc), -1, dtype=torch.int64, device=labels.device)
    table[inv[order], pos] = order
    return inv, counts[inv], table


def retrieval_metrics(embeddings, labels, *, ks=(1, 2), nmi: bool = True, seed: int = 0,
                      backend: str = "auto", map_max_rank: int | None = None,
                      max_queries: int | None = None, normalize: bool = True, maps: bool = True) -> dict[str, float]:
    """R@k for each k in ``ks``, mAP, MAP@R, mAP@10 and NMI, in percent (see the module docstring).
    ``maps=False``: R@k alone (training's per-epoch metric), from one search of max(ks) neighbours; the three
    mAP values are nan.

    ``embeddings``: (N, D) float; ``labels``: (N,) integer class ids; torch tensors (any device) or numpy arrays.
    ``normalize`` (default): L2-normalise the rows first, the metric ``N`` of every number in this project (as
    pytorch-metric-learning does by default); ``False`` measures Euclidean distances on the rows as given.
    """
    emb = torch.as_tensor(embeddings).detach().to(torch.float32)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    lab = torch.as_tensor(_to_numpy(labels) if not isinstance(labels, torch.Tensor) else labels)
    lab = lab.to(device=emb.device, dtype=torch.int64).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] != lab.shape[0]:
        raise ValueError(f"need (N, D) embeddings and (N,) labels, got {tuple(emb.shape)} and {tuple(lab.shape)}")
    n = emb.shape[0]
    if n < 2:
        raise ValueError("retrieval metrics need at least 2 embeddings")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if map_max_rank is not None and map_max_rank < 1:
        raise ValueError(f"map_max_rank must be positive or None, got {map_max_rank}")

    index = FlatIndex(emb, backend)
    _, class_size, table = _class_members(lab)
    inv = torch.unique(lab, return_inverse=True)[1]
    n_pos = class_size - 1
    queries = torch.nonzero(n_pos > 0).reshape(-1)
    if max_queries is not None and max_queries < queries.numel():
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(queries.numel(), size=max_queries, replace=False))
        queries = queries[torch.from_numpy(pick).to(queries.device)]
    kk = min(n - 1, max(max(ks), 10, int(n_pos.max()), map_max_rank or 0) if maps else max(ks))
    per_query: dict[str, list[torch.Tensor]] = {key: [] for key in [f"R@{k}" for k in ks] + ["mAP", "MAP@R", "mAP@10"]}
    ranks_1 = torch.arange(1, kk + 1, device=emb.device, dtype=torch.float64)
    exact_map = maps and map_max_rank is None
    chunk = min(4096, block_rows(candidate_count(n, kk)))  # one coarse search per chunk
    if exact_map:  # (chunk, N) keys per chunk
        chunk = min(chunk, max(1, _FULL_ROWS_ELEMENTS // n))
    for qrows in queries.split(chunk):
        keys = pkeys = pos = None
        if exact_map:  # every distance, once: the kNN lists' candidates and the ranks of far positives
            pos = table[inv[qrows]]
            pos = pos.masked_fill(pos == qrows[:, None], -1)  # the query's positives (-1: padding)
            keys = index.full_keys(emb[qrows], qrows)
            pkeys = keys.gather(1, pos.clamp_min(0))
            keys = sort_values(keys)
        _, idx = index.search(emb[qrows], kk, exclude=qrows, distances=False, relevance=(lab[qrows], lab),
                              presorted=keys)
        rel = lab[idx] == lab[qrows][:, None]
        for k in ks:
            per_query[f"R@{k}"].append(rel[:, :k].any(1).to(torch.float64))
        if not maps:
            continue
        hits = rel.cumsum(1).to(torch.float64)
        prec = hits / ranks_1 * rel
        r = n_pos[qrows]
        in_r = ranks_1[None, :] <= r[:, None]
        per_query["MAP@R"].append(row_sums(prec * in_r) / r)
        per_query["mAP@10"].append(row_sums(prec[:, :10]) / 10.0)
        per_query["mAP"].append(_average_precision(idx, rel, prec, r, pos, keys, pkeys, map_max_rank))
    nq = queries.numel()
    out = {key: (100.0 * exact_sum(v) / nq if nq and v else math.nan) for key, v in per_query.items()}
    result = {f"R@{k}": out[f"R@{k}"] for k in ks}
    result |= {"mAP": out["mAP"], "MAP@R": out["MAP@R"], "mAP@10": out["mAP@10"]}
    result["NMI"] = nmi_score(emb, lab, seed) if nmi else math.nan
    return result


def _average_precision(idx, rel, prec, r, pos, keys, pkeys, map_max_rank) -> torch.Tensor:
    """Per query of the chunk (B,) float64: AP over all positives (exact), or truncated at ``map_max_rank``.

    ``pos`` (B, P): the positives (-1 = padding); ``keys``: the queries' sorted :meth:`FlatIndex.full_keys` and
    ``pkeys`` the positives' own keys (exact AP only). A positive inside the exact kNN list keeps its place there;
    one beyond it ranks where its key falls among all keys (float32 distance, then index), at least past the list.
    """
    kk = idx.shape[1]
    if map_max_rank is not None:
        lim = min(map_max_rank, kk)
        return row_sums(prec[:, :lim]) / r
    ap = row_sums(prec) / r  # exact where every positive is inside the list
    todo = torch.nonzero(rel.sum(1) != r).reshape(-1)
    if todo.numel() == 0:
        return ap
    pos, valid = pos[todo], pos[todo] >= 0
    coarse = torch.searchsorted(keys[todo], pkeys[todo]) + 1
    knn_perm = argsort_unique(idx[todo])
    knn_sorted = idx[todo].gather(1, knn_perm)
    loc = torch.searchsorted(knn_sorted, pos.clamp_min(0)).clamp_max(kk - 1)
    inside = (knn_sorted.gather(1, loc) == pos) & valid
    exact_rank = knn_perm.gather(1, loc) + 1
    rank = torch.where(inside, exact_rank, coarse.clamp_min(kk + 1))
    rank_sorted = sort_values(rank.masked_fill(~valid, _INT64_MAX))
    t = torch.arange(1, rank.shape[1] + 1, device=rank.device)
    ok = rank_sorted != _INT64_MAX
    # Keep ranks strictly increasing (guards the rare exact/coarse disagreement at the list boundary).
    rank_sorted = torch.where(ok, torch.cummax(rank_sorted - t, dim=1).values + t, rank_sorted)
    ap[todo] = row_sums(torch.where(ok, t.to(torch.float64) / rank_sorted.to(torch.float64), 0.0)) / r[todo]
    return ap


def class_distances(embeddings, labels, *, max_items: int = 4000, seed: int = 0,
                    block: int = 1024) -> tuple[float, float]:
    """The mean Euclidean distance over same-class pairs and over different-class pairs of an embedding space
    (``(intra, inter)``; pairs i != j, embeddings L2-normalised here, so both lie in [0, 2]): the definitions of
    CA-TRIDE's entanglement table (Tian et al., ICML 2024), and a collapse diagnostic for any model (an inter-class
    distance near 0 is a space collapsed to a point). Above ``max_items`` rows a seeded random subset is used (4,000
    rows are 8 million pairs: the means move in the fourth decimal). Distances come from one matrix product per
    block of ``block`` rows (``sqrt(2 - 2 cos)``), row sums in float64 added exactly (:func:`exact_sum`), so the
    values do not depend on the thread count; nan where a kind of pair is missing."""
    emb = torch.nn.functional.normalize(torch.as_tensor(embeddings).detach().to(torch.float32), dim=1)
    lab = torch.as_tensor(_to_numpy(labels) if not isinstance(labels, torch.Tensor) else labels)
    lab = lab.to(device=emb.device, dtype=torch.int64).reshape(-1)
    if len(lab) > max_items:
        pick = np.sort(np.random.default_rng(seed).choice(len(lab), size=max_items, replace=False))
        pick = torch.from_numpy(pick).to(emb.device)
        emb, lab = emb[pick], lab[pick]
    sums: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    counts = {True: 0, False: 0}
    for start in range(0, len(lab), block):
        d = torch.sqrt(torch.clamp(2.0 - 2.0 * (emb[start:start + block] @ emb.T), min=0.0)).double()
        same = lab[start:start + block, None] == lab[None, :]
        other = ~same
        rows = torch.arange(start, min(start + block, len(lab)), device=emb.device)
        same[rows - start, rows] = False  # i == j is no pair
        for kind, mask in ((True, same), (False, other)):
            sums[kind].append(row_sums(d * mask))
            counts[kind] += int(mask.sum())
    mean = {kind: exact_sum(sums[kind]) / counts[kind] if counts[kind] else float("nan") for kind in (True, False)}
    return mean[True], mean[False]


def entanglement(embeddings, labels, *, max_items: int = 4000, seed: int = 0, block: int = 1024) -> float:
    """CA-TRIDE's entanglement level of an embedding space: the mean same-class distance over the mean
    different-class distance (:func:`class_distances`; the paper reports 0.79 CUB, 0.79 CARS, 0.66 SOP); nan when
    either kind of pair is missing or the inter-class distance is 0."""
    return _ratio(*class_distances(embeddings, labels, max_items=max_items, seed=seed, block=block))


def collapse_diagnostic(embeddings, labels, *, seed: int = 0) -> dict[str, float]:
    """``intra_class_distance``, ``inter_class_distance`` (:func:`class_distances`) and their ratio
    ``entanglement``: what every training epoch and evaluation reports of its test embeddings."""
    intra, inter = class_distances(embeddings, labels, seed=seed)
    return {"intra_class_distance": intra, "inter_class_distance": inter, "entanglement": _ratio(intra, inter)}


def _ratio(intra: float, inter: float) -> float:
    if not (math.isfinite(intra) and math.isfinite(inter)) or inter == 0:
        return float("nan")
    return intra / inter
