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
  ``(1/10) sum_{i<=10} rel_i * P@i``; note the fixed 1/10 normalisation (a query with fewer than 10 positives cannot reach 100).
* ``NMI``: sklearn NMI between the labels and a seeded k-means (faiss ``Kmeans(niter=20, seed=seed)``, or
  sklearn ``KMeans(random_state=seed)`` without faiss) with k = number of classes, on all embeddings.

Cost. The kNN metrics need the K = max(max(ks), 10, largest class - 1) nearest neighbours of every query:
exact flat search, O(N^2 D) time, O(chunk * K) memory. Exact ``mAP`` needs the rank of every positive;
queries whose positives are not all inside their K nearest get one more pass over their full distance rows
(O(N^2) time, O(rows * N) memory in blocks of ~64M floats), where ranks come from float32 distance keys
(|q|^2 + |g|^2 - 2 q.g, ties by index) and positives inside the K nearest keep their exact kNN rank.
``map_max_rank=r`` replaces that pass by truncated AP (positives ranked beyond r count 0; a lower bound).
``max_queries`` scores a seeded random subset of queries against the full gallery (for very large N).

Sums: each query's values are summed in float64 in one fixed order and the totals exactly (``math.fsum``), so a
metric of given embeddings is the same float at any thread count, chunking or number of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robustbench_dml.knn import BLOCK_ELEMENTS, FlatIndex, column_blocks, faiss_module

# the (rows, N) buffer of full distance rows behind mAP's exact ranks: 256 MiB of float32
_FULL_ROWS_ELEMENTS = 1 << 26
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


def _full_pass_ranks(index: FlatIndex, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """1-based ranks (B, P) of gallery items ``pos`` (B, P; -1 = padding) among all items but the query.

    Order: float32 coarse squared distance (clamped at 0), ties by index; each row's distances are computed
    once and the positives' keys are read from the same buffer, so an item compares equal to itself.
    """
    emb = index.emb
    n = emb.shape[0]
    b, p = pos.shape
    q = emb[rows]
    d2 = torch.empty(b, n, dtype=torch.float32, device=emb.device)
    blocks = column_blocks(n, b)
    for s, e in blocks:
        index.sq_distances(q, s, e, out=d2[:, s:e])
    d2.clamp_min_(0.0)
    d2[torch.arange(b, device=emb.device), rows] = math.inf
    valid = pos >= 0
    pc = pos.clamp_min(0)
    pkey = (d2.gather(1, pc).view(torch.int32).to(torch.int64) << 32) | pc
    pkey = pkey.masked_fill(~valid, _INT64_MAX)
    pkey_sorted, perm = torch.sort(pkey, dim=1)
    counts = torch.zeros(b, p + 1, dtype=torch.int64, device=emb.device)
    for s, e in blocks:
        ids = torch.arange(s, e, device=emb.device)
        keys = (d2[:, s:e].view(torch.int32).to(torch.int64) << 32) | ids
        slot = torch.searchsorted(pkey_sorted, keys)
        counts.scatter_add_(1, slot, torch.ones_like(slot))
    ranks_sorted = counts.cumsum(1)[:, :p]
    ranks = torch.empty_like(ranks_sorted)
    ranks.scatter_(1, perm, ranks_sorted)
    return ranks.masked_fill(~valid, 0)


def retrieval_metrics(embeddings, labels, *, ks=(1, 2), nmi: bool = True, seed: int = 0,
                      backend: str = "auto", map_max_rank: int | None = None,
                      max_queries: int | None = None, normalize: bool = True) -> dict[str, float]:
    """R@k for each k in ``ks``, mAP, MAP@R, mAP@10 and NMI, in percent (see the module docstring).

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
    kk = min(n - 1, max(max(ks), 10, int(n_pos.max()), map_max_rank or 0))
    per_query: dict[str, list[torch.Tensor]] = {key: [] for key in [f"R@{k}" for k in ks] + ["mAP", "MAP@R", "mAP@10"]}
    ranks_1 = torch.arange(1, kk + 1, device=emb.device, dtype=torch.float64)
    chunk = max(1, min(4096, BLOCK_ELEMENTS // kk))
    for qrows in queries.split(chunk):
        _, idx = index.search(emb[qrows], kk, exclude=qrows, distances=False, relevance=(lab[qrows], lab))
        rel = lab[idx] == lab[qrows][:, None]
        for k in ks:
            per_query[f"R@{k}"].append(rel[:, :k].any(1).to(torch.float64))
        hits = rel.cumsum(1).to(torch.float64)
        prec = hits / ranks_1 * rel
        r = n_pos[qrows]
        in_r = ranks_1[None, :] <= r[:, None]
        per_query["MAP@R"].append(row_sums(prec * in_r) / r)
        per_query["mAP@10"].append(row_sums(prec[:, :10]) / 10.0)
        per_query["mAP"].append(_average_precision(index, qrows, idx, rel, prec, r, table[inv[qrows]], map_max_rank))
    nq = queries.numel()
    out = {key: (100.0 * exact_sum(v) / nq if nq else math.nan) for key, v in per_query.items()}
    result = {f"R@{k}": out[f"R@{k}"] for k in ks}
    result |= {"mAP": out["mAP"], "MAP@R": out["MAP@R"], "mAP@10": out["mAP@10"]}
    result["NMI"] = nmi_score(emb, lab, seed) if nmi else math.nan
    return result


def _average_precision(index, qrows, idx, rel, prec, r, members, map_max_rank) -> torch.Tensor:
    """Per query of the chunk (B,) float64: AP over all positives (exact), or truncated at ``map_max_rank``."""
    kk = idx.shape[1]
    found = rel.sum(1)
    if map_max_rank is not None:
        lim = min(map_max_rank, kk)
        return row_sums(prec[:, :lim]) / r
    complete = found == r
    ap = row_sums(prec) / r  # exact where every positive is inside the list
    todo = torch.nonzero(~complete).reshape(-1)
    if todo.numel() == 0:
        return ap
    n = len(index)
    rows_per = max(1, _FULL_ROWS_ELEMENTS // n)
    for part in todo.split(rows_per):
        q = qrows[part]
        pos = members[part].masked_fill(members[part] == q[:, None], -1)
        coarse = _full_pass_ranks(index, q, pos)
        # Positives inside the exact kNN list keep their exact rank; the others rank beyond it.
        knn_sorted, knn_perm = torch.sort(idx[part], dim=1)
        loc = torch.searchsorted(knn_sorted, pos.clamp_min(0)).clamp_max(kk - 1)
        inside = (knn_sorted.gather(1, loc) == pos) & (pos >= 0)
        exact_rank = knn_perm.gather(1, loc) + 1
        rank = torch.where(inside, exact_rank, coarse.clamp_min(kk + 1))
        rank = rank.masked_fill(pos < 0, _INT64_MAX)
        rank_sorted = torch.sort(rank, dim=1).values
        t = torch.arange(1, rank.shape[1] + 1, device=rank.device)
        valid = rank_sorted != _INT64_MAX
        # Keep ranks strictly increasing (guards the rare exact/coarse disagreement at the list boundary).
        rank_sorted = torch.where(valid, torch.cummax(rank_sorted - t, dim=1).values + t, rank_sorted)
        ap[part] = row_sums(torch.where(valid, t.to(torch.float64) / rank_sorted.to(torch.float64), 0.0)) / r[part]
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
