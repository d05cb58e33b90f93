"""Exact k-nearest-neighbour search with one tie order on every backend.

Metric: Euclidean distance ``||q - g||_2`` on float32 embeddings (L2-normalised by the caller; RobRank metric
"N"). The result is the k smallest items under the total order ``(distance, gallery index)`` ascending, with
one gallery index per query optionally excluded (the query itself, excluded *by index*).

How every backend gives the same answer:

1. A *coarse* search (faiss ``IndexFlatL2`` or chunked torch ``|q|^2 + |g|^2 - 2 q.g``) proposes the
   ``m = k + extra`` nearest candidates. Coarse squared distances carry float32 rounding that depends on the
   backend (and faiss/topk return tied items in backend-specific orders: ascending, descending, scrambled).
2. The order is (canonical distance, index), the *canonical* distance being ``torch.cdist`` in direct mode
   (``sqrt(sum((q - g)^2))``, no matrix product): a function of the two vectors alone, bitwise the same
   whichever backend proposed them, and exactly 0 for duplicates. Two candidates whose coarse squared distances
   differ by more than twice the slack (:data:`TIE_TOL`) are in the same order under both distances, so the
   candidates, sorted by coarse distance, fall into runs of near-ties (neighbours closer than that); only the
   members of a run get their canonical distance computed, and each run is ordered by (canonical distance,
   index). How much that saves depends on how the distances crowd: on spread-out embeddings nearly all of the
   ``m x D`` gathered values per query; on a trained 512-d Fashion-MNIST model, where about half the neighbours
   sit in runs, about half. The k results' distances are canonical ones (``distances=False`` skips them).
   A caller that reads only which places hold an item of the query's label (the retrieval metrics) passes
   ``relevance``: then only the runs that mix the query's label with others, and the run holding the k-th place,
   are ordered canonically; the others keep the coarse order, which puts the same labels at the same places.
3. Boundary check: an item left out by the coarse search has coarse squared distance >= the largest proposed
   one, ``c_m``. When the run holding the k-th result is not clearly below that (near-ties at the k boundary,
   e.g. collapsed embeddings) the query is searched again with twice as many candidates, up to the whole
   gallery, where the answer is exact by construction.

So with all-equal embeddings every backend returns indices ``0..k-1`` (skipping the excluded one).
Memory: O(B * m) per query chunk plus O(chunk * D) scratch; never O(N^2).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

BACKENDS = ("auto", "faiss", "torch")

#: Absolute slack on expansion-formula *squared* distances (:meth:`FlatIndex.sq_distances`), relative to
#: (|q|^2 + max|g|^2): their float32 error is that of a 512-term dot product, measured at most 1.5e-6 (faiss, a
#: trained 512-d Fashion-MNIST model, 500 queries x 1,124 neighbours, against float64), so 1e-5 (2e-5 at that
#: scale of 2) leaves a margin of about 13. Two items whose squared distances differ by more are ordered correctly
#: by the expansion formula; closer pairs (near-ties) are ordered by :func:`canonical_distances`. About half of a
#: trained model's neighbour gaps fall under it, which is what the canonical distances cost.
TIE_TOL = 1e-5
#: Elements of one temporary distance block (rows x gallery columns, or rows x m x D gathered candidates):
#: 4 MiB of float32, cache-friendly; measured ~1.5x faster than 16 MiB blocks on the element-wise passes.
BLOCK_ELEMENTS = 1 << 20
#: Fewest gallery columns per block, so a pass over a large gallery with many rows does not degenerate.
MIN_BLOCK_COLUMNS = 1024


def column_blocks(n: int, rows: int, columns: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) ranges covering gallery columns [0, n) for a pass with ``rows`` query rows: ``columns`` per
    block, by default enough that rows x columns stays near :data:`BLOCK_ELEMENTS` (at least
    :data:`MIN_BLOCK_COLUMNS`)."""
    if columns is None:
        columns = max(MIN_BLOCK_COLUMNS, BLOCK_ELEMENTS // max(1, rows))
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    return [(start, min(n, start + columns)) for start in range(0, n, columns)]


def candidate_count(n: int, k: int, extra: int | None = None) -> int:
    """How many coarse candidates :meth:`FlatIndex.search` first asks for, for k results from n items: k + 1 (the
    excluded query) + ``extra`` (default k / 8, at least 8), at most n."""
    return min(n, k + 1 + (extra if extra is not None else max(8, k // 8)))


def block_rows(m: int) -> int:
    """Query rows per coarse search of m candidates (rows x m near :data:`BLOCK_ELEMENTS`): a caller searching many
    queries passes them in chunks of this size, so that every coarse call is a full one."""
    return max(1, min(65536, BLOCK_ELEMENTS // m))


@lru_cache(maxsize=1)
def faiss_module():
    """The one place faiss is imported (lazily; ecosystem pitfall 12). None when not installed."""
    try:
        import faiss  # noqa: PLC0415
    except ImportError:  # installed without the cpu or gpu extra: chunked torch serves
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = faiss_module()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: faiss on CPU tensors (or CUDA tensors when GPU faiss is installed), else chunked torch."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if faiss_module() is None:
            return "torch"
        if device.type == "cpu" or (device.type == "cuda" and faiss_has_gpu()):
            return "faiss"
        return "torch"
    if backend == "faiss" and faiss_module() is None:
        raise ValueError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    return backend


def canonical_distances(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The distance that orders every ranking: (B, m) between ``q`` (B, D) and ``g`` (B, m, D), computed directly
    (``sqrt(sum((q - g)^2))`` in float32, no matrix product, no grad). A function of the two vectors alone: the same
    bits whatever the pair's position in the batch, equal for duplicate vectors (exactly 0 for a vector and
    itself), symmetric in its arguments. The fast expansion formula decides every comparison it decides by more than
    :data:`TIE_TOL`; this one decides the rest."""
    with torch.no_grad():
        return torch.cdist(q[:, None, :], g, compute_mode="donot_use_mm_for_euclid_dist")[:, 0]


def squared_norms(x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """(N,) squared L2 norms of the rows of ``x`` (N, D): the values of ``(x * x).sum(1)`` through one reusable
    (rows, D) buffer instead of an (N, D) temporary (and not a fresh slice temporary per block either: glibc keeps
    those blocks, interleaved with the small results, resident; measured +1.9 GB at 10^6 x 512)."""
    out = x.new_empty(x.shape[0])
    buf = x.new_empty(min(rows, x.shape[0]), x.shape[1])
    for start in range(0, x.shape[0], rows):
        c = x[start:start + rows]
        torch.sum(torch.mul(c, c, out=buf[: len(c)]), 1, out=out[start:start + len(c)])
    return out


class FlatIndex:
    """The gallery side of the search: the embeddings plus, lazily, one faiss flat index over them."""

    def __init__(self, embeddings: torch.Tensor, backend: str = "auto"):
        if embeddings.ndim != 2:
            raise ValueError(f"gallery embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
        self.emb = embeddings.detach().to(torch.float32).contiguous()
        self.backend = resolve_backend(backend, self.emb.device)
        self._faiss_index = None
        self._sqnorm = squared_norms(self.emb)
        self._max_sqnorm = float(self._sqnorm.max()) if len(self.emb) else 0.0

    def __len__(self) -> int:
        return self.emb.shape[0]

    def tie_slack(self, q: torch.Tensor) -> torch.Tensor:
        """(B,) float64: how far a squared distance from :meth:`sq_distances` for the rows of ``q`` may be from the
        true one (:data:`TIE_TOL` of ``|q|^2 + max|g|^2``)."""
        return TIE_TOL * ((q.detach().double() ** 2).sum(1) + self._max_sqnorm)

    def sq_distances(self, q: torch.Tensor, start: int = 0, stop: int | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, stop-start) squared Euclidean distances from rows of ``q`` (B, D) to gallery rows [start, stop), no
        grad: ``|g|^2 - 2 q.g + |q|^2`` from one matrix product with the gallery's squared norms computed once,
        float32 (rounding can leave tiny negatives; clamp before a square root). The one formula behind every
        full pass over the gallery (the coarse search, the attacks' per-step passes, mAP's exact ranks)."""
        stop = len(self) if stop is None else stop
        d2 = torch.addmm(self._sqnorm[start:stop].view(1, -1), q, self.emb[start:stop].T, alpha=-2.0, out=out)
        return d2.add_(q.pow(2).sum(dim=1, keepdim=True))

    # -- coarse candidate generation -------------------------------------------------------------------
    def _faiss(self):
        if self._faiss_index is None:
            faiss = faiss_module()
            cpu = faiss.IndexFlatL2(self.emb.shape[1])
            cpu.add(np.ascontiguousarray(self.emb.cpu().numpy(), dtype=np.float32))
            index = cpu
            if self.emb.device.type == "cuda" and faiss_has_gpu():  # pragma: no cover - needs GPU faiss
                self._gpu_res = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_res, self.emb.device.index or 0, cpu)
            self._faiss_index = index
        return self._faiss_index

    def coarse(self, q: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximately-ordered m nearest candidates: (squared distances (B, m), indices (B, m) int64)."""
        n = len(self)
        m = min(m, n)
        if self.backend == "faiss" and not (self.emb.device.type == "cuda" and m > 2048):
            qn = np.ascontiguousarray(q.detach().cpu().numpy(), dtype=np.float32)
            d2, idx = self._faiss().search(qn, m)
            return (torch.from_numpy(d2).to(q.device), torch.from_numpy(idx).to(q.device, torch.int64))
        return self._torch_coarse(q, m)

    def _torch_coarse(self, q: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        best_d = best_i = None
        for start, stop in column_blocks(n, q.shape[0], max(m, BLOCK_ELEMENTS // max(1, q.shape[0]))):
            d2 = self.sq_distances(q, start, stop)
            mm = min(m, stop - start)
            d, i = torch.topk(d2, mm, dim=1, largest=False, sorted=False)
            i = i + start
            if best_d is not None:
                d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                if d.shape[1] > m:
                    d, sel = torch.topk(d, m, dim=1, largest=False, sorted=False)
                    i = i.gather(1, sel)
            best_d, best_i = d, i
        order = torch.argsort(best_d, dim=1)
        return best_d.gather(1, order), best_i.gather(1, order)

    # -- canonical distances ---------------------------------------------------------------------------
    def exact_distances(self, q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Canonical distances (B, m) between q (B, D) and gallery rows idx (B, m): direct, position-free."""
        b, m = idx.shape
        d = self.emb.shape[1]
        out = torch.empty(b, m, dtype=torch.float32, device=q.device)
        rows = max(1, BLOCK_ELEMENTS // max(1, m * d))
        emb = self.emb
        for s in range(0, b, rows):
            e = min(b, s + rows)
            out[s:e] = canonical_distances(q[s:e], emb[idx[s:e]])
        return out

    def full_keys(self, q: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        """(B, N) int64: for each query row of ``q`` (B, D) and every gallery item, the item's squared distance
        (:meth:`sq_distances`, clamped at 0; +inf for the row's ``exclude`` item, -1 for none) in the high 32 bits,
        its index in the low 32: keys whose order is (distance, index), non-negative floats ordering as their bits.
        One matrix product for the whole gallery; O(B N) memory."""
        n = len(self)
        d2 = torch.empty(q.shape[0], n, dtype=torch.float32, device=self.emb.device)
        for s, e in column_blocks(n, q.shape[0]):
            self.sq_distances(q, s, e, out=d2[:, s:e])
        d2.clamp_min_(0.0)
        has = exclude >= 0  # -1: nothing excluded
        d2[torch.arange(q.shape[0], device=d2.device)[has], exclude[has]] = math.inf
        keys = d2.view(torch.int32).to(torch.int64)
        del d2
        keys <<= 32
        return keys.bitwise_or_(torch.arange(n, device=keys.device))

    # -- public search ---------------------------------------------------------------------------------
    def search(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
               extra: int | None = None, *, distances: bool = True,
               relevance: tuple[torch.Tensor, torch.Tensor] | None = None,
               presorted: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """k nearest gallery rows per query, ordered by (distance, index); see the module docstring. Returns the
        canonical distances (B, k) (None with ``distances=False``) and the indices (B, k).

        ``relevance`` = (query labels (B,), gallery labels (N,)), for a caller that reads only which places hold an
        item of the query's label (retrieval metrics): a run of near-ties whose members are all of the query's
        label, or none of them, and that does not reach the k-th place is left in coarse order instead of
        canonical order (its places hold the same labels either way), so only the runs that decide a metric pay
        for canonical distances. The labels at every place, and the k items returned, are those of the canonical
        order on every backend; the distances, when asked for, are the returned items' own, so within such a run
        they need not be sorted.

        ``presorted``: the queries' :meth:`full_keys`, each row sorted ascending, from a caller that needs every
        distance anyway (mAP's exact ranks): the coarse candidates are read off them instead of searched."""
        n = len(self)
        if queries.ndim != 2 or queries.shape[1] != self.emb.shape[1]:
            raise ValueError(f"queries must be (B, {self.emb.shape[1]}), got {tuple(queries.shape)}")
        q = queries.detach().to(torch.float32).contiguous()
        b = q.shape[0]
        if exclude is None:
            ex = torch.full((b,), -1, dtype=torch.int64, device=q.device)
        else:
            ex = torch.as_tensor(exclude, device=q.device).to(torch.int64).reshape(-1)
            if ex.shape[0] != b:
                raise ValueError(f"exclude must hold one index per query ({b}), got {ex.shape[0]}")
        available = n - 1 if bool((ex >= 0).any()) else n
        if k < 1 or k > available:
            raise ValueError(f"k={k} must be between 1 and the number of searchable gallery items ({available})")
        dev = self.emb.device
        q, ex = q.to(dev), ex.to(dev)
        out_i = torch.empty(b, k, dtype=torch.int64, device=dev)
        slack = self.tie_slack(q)
        if relevance is not None:
            q_lab, g_lab = (torch.as_tensor(t, device=dev).reshape(-1) for t in relevance)
            if q_lab.shape[0] != b or g_lab.shape[0] != n:
                raise ValueError(f"relevance needs {b} query labels and {n} gallery labels")
            relevance = (q_lab, g_lab)
        m = candidate_count(n, k, extra)
        pending = torch.arange(b, device=dev)
        while pending.numel():
            rows = block_rows(m)
            oks = [self._search_block(q[sel], sel, k, ex[sel], m, slack[sel], out_i,
                                      None if relevance is None else (relevance[0][sel], relevance[1]),
                                      None if presorted is None else presorted[:, :m][sel])
                   for sel in pending.split(rows)]
            pending = pending[~torch.cat(oks)]
            m = min(n, 2 * m)
        out_d = self.exact_distances(q, out_i).to(queries.device) if distances else None
        return out_d, out_i.to(queries.device)

    def _search_block(self, q, sel, k, ex, m, slack, out_i, relevance=None, keys=None) -> torch.Tensor:
        """Search the rows ``sel`` with ``m`` candidates each; writes the accepted rows' results, returns which."""
        n = len(self)
        if keys is not None:  # the first m of the rows' sorted full_keys: the coarse candidates in order
            c2, idx = (keys >> 32).to(torch.int32).view(torch.float32), keys & 0xFFFFFFFF
        elif m >= n:
            idx = torch.arange(n, device=q.device).expand(q.shape[0], n)
            c2 = self.sq_distances(q)
        else:
            c2, idx = self.coarse(q, m)
        c_last = c2[:, -1].to(torch.float64) if m < n else None
        hit = idx == ex[:, None]
        if (keys is not None or c_last is not None) and bool((c2[:, 1:] >= c2[:, :-1]).all()):
            # the coarse search's ascending order, the excluded item (at most one per row) moved to the end
            place = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
            at = torch.where(hit.any(1), hit.to(torch.int8).argmax(1), idx.shape[1])[:, None]
            order = torch.where(place >= at, place + 1, place)
            order[:, -1] = torch.where(at[:, 0] < idx.shape[1], at[:, 0], idx.shape[1] - 1)
            idx = idx.gather(1, order)
            key = c2.gather(1, order).to(torch.float64).masked_fill(idx == ex[:, None], math.inf)
        else:
            key, order = torch.sort(c2.to(torch.float64).masked_fill(hit, math.inf), dim=1)
            idx = idx.gather(1, order)
        # runs of near-ties: neighbours in coarse order closer than the two distances' combined error
        near = (key[:, 1:] - key[:, :-1]) <= 2 * slack[:, None]
        run = torch.cat([torch.zeros_like(key[:, :1], dtype=torch.int64), (~near).long().cumsum(1)], 1)
        needed = near if relevance is None else _deciding(near, run, idx, k, *relevance)
        tied = torch.nonzero(needed.any(1)).reshape(-1)
        if tied.numel():
            idx[tied] = self._order_runs(q[tied], idx[tied], run[tied], needed[tied])
        if c_last is None:
            ok = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
        else:  # the k-th result's run ends clearly before anything the coarse search left out
            run_end = torch.where(run == run[:, k - 1:k], key, -math.inf).max(1).values
            ok = run_end < c_last - 2 * slack
        out_i[sel[ok]] = idx[ok, :k]
        return ok

    def _order_runs(self, q, idx, run, near):
        """Rows whose coarse order has near-ties: every member of a run gets its canonical distance, and each run is
        ordered by (canonical distance, index), which orders the row by (canonical distance, index) (module
        docstring). ``near`` marks the neighbouring pairs to resolve (all of a run's, or none of them). Returns the
        reordered ``idx``; a run's places stay its places, so ``run`` (and the largest coarse key of a run) hold."""
        member = torch.zeros_like(idx, dtype=torch.bool)
        member[:, 1:] |= near
        member[:, :-1] |= near
        rows, cols = torch.nonzero(member, as_tuple=True)  # row-major: grouped by row, then run, then place
        mid = idx[rows, cols]
        canon = self._member_distances(q, member, rows, cols, mid)
        # one sort of (row, run, canonical distance, index): the (distance, index) pair ranked once, then packed
        # below the run number into one int64 key (both fit: runs < rows x m, ranks < members)
        rank = torch.empty_like(mid)
        rank[argsort_unique((canon.view(torch.int32).to(torch.int64) << 32) | mid)] = torch.arange(
            mid.numel(), device=mid.device)
        group = rows * idx.shape[1] + run[rows, cols]
        order = argsort_unique((group << max(1, mid.numel().bit_length())) | rank)
        idx = idx.clone()
        idx[rows, cols] = mid[order]
        return idx

    def _member_distances(self, q, member, rows, cols, mid) -> torch.Tensor:
        """Canonical distances (M,) of the run members (``rows``, ``cols``: where; ``mid``: which gallery row), each
        query row's members gathered into a padded (rows, most members) table, rows of similar counts together, so
        that each query vector is read once (not copied per member) and the padding stays small."""
        count = member.sum(1)
        slot = member.to(torch.int32).cumsum(1)[rows, cols].to(torch.int64) - 1
        width = int(count.max())
        shape = (member.shape[0], width)
        table = torch.zeros(shape, dtype=torch.int64, device=mid.device)
        table[rows, slot] = mid
        canon = torch.zeros(shape, dtype=torch.float32, device=mid.device)
        by_count = torch.argsort(count).tolist()
        counts = count.tolist()
        budget = max(1, BLOCK_ELEMENTS // q.shape[1])
        start = 0
        while start < len(by_count):
            stop = start + 1
            while stop < len(by_count) and (stop + 1 - start) * counts[by_count[stop]] <= budget:
                stop += 1
            blk = torch.tensor(by_count[start:stop], device=mid.device)
            c = max(1, counts[by_count[stop - 1]])
            canon[blk, :c] = canonical_distances(q[blk], self.emb[table[blk, :c]])
            start = stop
        return canon[rows, slot]


def argsort_unique(keys: torch.Tensor) -> torch.Tensor:
    """The permutation sorting a 1-D or (rows, n) int64 tensor of distinct keys (per row) ascending: numpy's sort on
    the CPU (vectorised; measured ~8x torch's on int64 rows of 10,000), torch's elsewhere; with distinct keys every
    correct sort gives this one permutation."""
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), axis=-1))
    return torch.argsort(keys, dim=-1)


def sort_values(x: torch.Tensor) -> torch.Tensor:
    """The rows of an int64 tensor sorted ascending (values only, so any sort gives them): numpy's on the CPU, in
    place (``x`` is consumed), torch's elsewhere."""
    if x.device.type == "cpu":
        x.numpy().sort(axis=-1)
        return x
    return torch.sort(x, dim=-1).values


def _deciding(near: torch.Tensor, run: torch.Tensor, idx: torch.Tensor, k: int, q_lab: torch.Tensor,
              g_lab: torch.Tensor) -> torch.Tensor:
    """The near-tie pairs (B, m-1) whose order a relevance reader can see (:meth:`FlatIndex.search`'s
    ``relevance``): those of runs with members both of and not of the query's label, and of the run holding the
    k-th place (which items are returned)."""
    rel = g_lab[idx] == q_lab[:, None]
    mixed_pair = (near & (rel[:, 1:] != rel[:, :-1])).to(torch.int64)
    mixed_run = torch.zeros_like(run).scatter_add_(1, run[:, 1:], mixed_pair) > 0
    return near & (mixed_run.gather(1, run[:, 1:]) | (run[:, 1:] == run[:, k - 1:k]))
