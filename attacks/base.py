"""The ranking-attack interface and the rank arithmetic every attack shares (RobRank).

Threat model (white box): the attacked images (queries or candidates; they are gallery members) move inside the
L-infinity ball of radius ``eps`` around their clean pixels, intersected with [0,1]; gradients flow through the
model; the gallery embeddings (clean test split, L2-normalised, metric ``N``: d(a,b) = ||a-b||_2) never change.
Every attack *minimises* its loss with the one PGD engine (:func:`attacks.pgd.pgd`), no random start.

Call shape (all attacks)::

    out = attack(images, labels, gallery, generator=g, query_index=idx)

``images`` (B, C, H, W) in [0,1]; ``labels`` (B,) int; ``gallery`` a :class:`robustbench_dml.gallery.Gallery`;
``generator`` a CPU ``torch.Generator`` for every random selection (drawn on the CPU, so selections do not depend
on the device); ``query_index`` (B,) the gallery indices of the attacked images ("self"). Without it, self is the
nearest gallery item to the clean embedding (RobRank's argmin rule), which is ambiguous when the split holds exact
duplicates: the evaluation always passes the index.

Results are per query, on the CPU, in the units of ``docs/protocol.md`` (percent of gallery for CA/QA, cosine for
TMA, distance for ES:D, 0/100 per query for ES:R, LTM, GTM, GTT), for the clean images (``clean``) and after the attack
(``per_query``), plus a per-query ``success`` flag whose definition each attack documents. Success always means
"the attack changed the outcome": it is False wherever the clean state is already the attacker's goal, so at
eps = 0 no query succeeds. The "top 1%" used by CA/QA success is the first floor(0.01 N) + 1 places of a ranking
(the K + 1 nearest items of RobRank's CA-/QA- selections, self included).

Gallery-side cost: selections and top-k measurements use ``Gallery.knn`` (canonical (distance, index) order);
everything done at every PGD step is a chunked pass over ``gallery.embeddings`` (``Gallery.block_distances``,
memory O(B x chunk)); distances that stay fixed during PGD (CA's query-to-gallery rows) are sorted once per pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd import eval_mode, pgd
from robustbench_dml.errors import UserError
from robustbench_dml.knn import canonical_distances
from robustbench_dml.registry import Registry

#: every attack class, registered with ``@ATTACKS.register(<paper acronym>)`` in its own file (the id equals the
#: class's ``id``); third-party attacks join through the entry-point group ``dmlbench.attacks``
ATTACKS: Registry = Registry(
    "attack",
    builtin_modules=("attacks.candidate", "attacks.query", "attacks.tma", "attacks.embedding_shift", "attacks.ltm",
                     "attacks.gtm", "attacks.gtt"),
)

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes for per-batch fixed data (CA's sorted distances)


@dataclass
class AttackOutput:
    """What one attack call returns; every tensor is detached and on the CPU except ``x_adv`` (input device).

    ``per_query`` / ``clean``: key -> (B,) float64 in scoring units; ``success``: (B,) bool;
    ``selection``: the drawn targets (gallery indices, (B, W) / (B, M) / (B,)) for inspection;
    ``iterations``: PGD gradient evaluations run per image; ``per_query_robrank``: for an attack whose RobRank
    quirk is only a measurement (``robrank_quirk == "measure"``) run in the corrected protocol, the same run's
    results measured as the reference does (None otherwise); ``extra``: with an engine (:mod:`attacks.engine`),
    ``parts`` and ``check`` (CPU tensors).
    """

    x_adv: torch.Tensor
    per_query: dict[str, torch.Tensor]
    success: torch.Tensor
    clean: dict[str, torch.Tensor]
    selection: dict[str, torch.Tensor] = field(default_factory=dict)
    iterations: int = 0
    per_query_robrank: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Pure rank arithmetic (functions of distance tensors; unit-tested on hand-made values)


def top_fraction_limit(n: int) -> int:
    """K = floor(0.01 N): RobRank's "top 1%" pool size (CA-/QA- select among the K nearest non-self items)."""
    return int(n * 0.01)


def place_sums(percent: torch.Tensor, n: int, per_item: int) -> torch.Tensor:
    """The integer behind a CA/QA result: the sum S of the ``per_item`` places (W or M) whose mean the result reports
    as ``p = 100 (S / per_item) / N`` percent of the gallery, (B,) int64.

    S is recovered as ``round(p N per_item / 100)``. The result went through at most four float64 roundings (the
    mean, the product, the division, here the product back), so it is within ``4 S 2^-53`` of S: below 10^-3 for any
    S < 10^12, far from the half-way point whatever order or instructions (a reciprocal multiply, FMA, vector width)
    a machine uses. Every success rule compares these integers; the percentages are for scores and display only.
    """
    p = torch.as_tensor(percent, dtype=torch.float64)
    return torch.round(p * (n * per_item) / 100.0).to(torch.int64)


def rank_flip_success(sign: str, clean: torch.Tensor, adv: torch.Tensor, n: int, per_item: int = 1) -> torch.Tensor:
    """Success of the rank attacks (CA, QA) from the item's place, clean and after, given as the results (percent of
    the gallery, the mean over the ``per_item`` targets) and decided on the integer place sums S
    (:func:`place_sums`), with K = :func:`top_fraction_limit` (N):

    - inside the top 1% (the first K + 1 places, 0-based place <= K): ``S <= K per_item``;
    - in the far half (place at or beyond 50% of the gallery): ``2 S >= N per_item``.

    "+" (CA+, QA+): an item ranked outside the top 1% enters it: an unrelated item made to look like a near
    duplicate. "-" (CA-, QA-): an item inside the top 1% is pushed to the far half: a near duplicate made to look
    unrelated. The "-" threshold is the median, not the edge of the top 1%: with W = M = 1, pushing one neighbour
    just out of the top 1% succeeded on every query of every digits model (a move of a few places), so that worst
    case ranked nothing.
    """
    k = top_fraction_limit(n)
    before, after = place_sums(clean, n, per_item), place_sums(adv, n, per_item)
    if sign == "+":
        return flip_success(before > k * per_item, after > k * per_item)
    if sign == "-":
        return (before <= k * per_item) & (2 * after >= n * per_item)
    raise ValueError(f"sign must be '+' or '-', not {sign!r}")


def sort_with_prefix(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of fixed distances (R, N) ascending; return (sorted (R, N), prefix sums (R, N+1)).

    Prefix sums are accumulated in float64 and stored in the rows' dtype (loss values stay accurate to ~1e-7
    relative; gradients do not use them).
    """
    srt = torch.sort(rows, dim=1).values
    prefix = torch.empty(rows.shape[0], rows.shape[1] + 1, dtype=rows.dtype, device=rows.device)
    prefix[:, 0] = 0.0
    prefix[:, 1:] = torch.cumsum(srt, dim=1, dtype=torch.float64)  # peak: rows, sorted, float64 sums, prefix
    return srt, prefix


def strict_count_sorted(srt: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """#{x : B_x < a} per row, from rows sorted ascending (R, N) and thresholds ``a`` (R,). Ties not counted."""
    return torch.searchsorted(srt, a.detach().reshape(-1, 1).contiguous(), right=False).squeeze(1)


def sorted_hinge(a: torch.Tensor, srt: torch.Tensor, prefix: torch.Tensor, sign: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row hinge mean over fixed distances, with autograd through ``a`` only.

    sign "+": mean_x max(0, a - B_x)  (value (cnt*a - sum_{B<a} B)/N, d/da = #{B < a}/N)
    sign "-": mean_x max(0, B_x - a)  (value (sum_{B>a} B - cnt*a)/N, d/da = -#{B > a}/N)
    ``a`` (R,) differentiable, ``srt``/``prefix`` from :func:`sort_with_prefix`. Returns (loss (R,), strict count
    #{B < a} (R,) int64). The gradient equals torch's relu-based hinge (relu'(0) = 0, ties do not count).
    """
    n = srt.shape[1]
    ad = a.detach()
    lt = strict_count_sorted(srt, ad)
    if sign == "+":
        cnt = lt
        value = cnt.double() * ad.double() - prefix.gather(1, cnt.view(-1, 1)).squeeze(1).double()
        slope = cnt.to(a.dtype)
    elif sign == "-":
        le = torch.searchsorted(srt, ad.reshape(-1, 1).contiguous(), right=True).squeeze(1)
        cnt = n - le
        value = (prefix[:, n].double() - prefix.gather(1, le.view(-1, 1)).squeeze(1).double()) - cnt.double() * ad.double()
        slope = -cnt.to(a.dtype)
    else:
        raise ValueError(f"sign must be '+' or '-', not {sign!r}")
    loss = (value / n).to(a.dtype) + slope * (a - ad) / n
    return loss, lt


# ----------------------------------------------------------------------------------------------------------------
# Chunked gallery passes (memory O(B x chunk))


@torch.no_grad()
def chunked_positions(gallery, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based positions (B, M) of gallery items ``targets`` (B, M) in the ranking of the whole gallery by each row
    of ``z`` (B, D): #{x : d(z, X_x) < d(z, X_k)} + #{x < k : d(z, X_x) = d(z, X_k)}, the place of k in a stable
    ascending sort (self not removed, RobRank QA). Distances are compared by the fast formula where it decides and
    by :func:`robustbench_dml.knn.canonical_distances` at near-ties, so duplicates of k tie exactly and are
    ordered by index on every machine."""
    b, m = targets.shape
    target = canonical_distances(z, gallery.embeddings[targets])  # (B, M)
    lo, hi = _tie_band(target, gallery.tie_slack(z).view(-1, 1))
    lo, hi = lo[:, :, None], hi[:, :, None]
    pos = torch.zeros(b, m, dtype=torch.int64, device=z.device)
    for start, stop in gallery.blocks(b * m):
        d2 = gallery.block_sq_distances(z, start, stop)[:, None, :]  # (B, 1, c)
        pos += (d2 < lo).sum(dim=2)
        qi, ti, ci = torch.nonzero((d2 >= lo) & (d2 <= hi), as_tuple=True)
        if qi.numel():
            x, k = ci + start, targets[qi, ti]
            d, t = canonical_distances(z[qi], gallery.embeddings[x][:, None, :])[:, 0], target[qi, ti]
            before = ((d < t) | ((d == t) & (x < k))) & (x != k)
            pos.index_put_((qi, ti), before.to(torch.int64), accumulate=True)
    return pos


def _tie_band(dist: torch.Tensor, slack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), float32 bounds on fast squared distances around the canonical ``dist``: below lo an item is surely
    closer, above hi surely farther, in between a near-tie (``slack`` broadcasts against ``dist``)."""
    d2 = dist.double().square()
    return (d2 - slack).to(torch.float32), (d2 + slack).to(torch.float32)


def _strict_band(gallery, q: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For CA's strict counts: the canonical d(q_r, z_r) per row (R,) and its tie band (lo, hi) (R, 1) on the fast
    squared distances from ``q``'s rows (:func:`_tie_band`)."""
    a = canonical_distances(q, z[:, None, :])[:, 0]
    lo, hi = _tie_band(a.view(-1, 1), gallery.tie_slack(q).view(-1, 1))
    return a, lo, hi


def _add_closer_ties(cnt: torch.Tensor, gallery, q: torch.Tensor, a: torch.Tensor, ri: torch.Tensor,
                     ci: torch.Tensor) -> None:
    """Add to ``cnt`` (R,) the near-ties (rows ``ri``, gallery items ``ci``) that are canonically closer to their
    row of ``q`` than ``a`` is: the exact decision inside the tie band."""
    d = canonical_distances(q[ri], gallery.embeddings[ci][:, None, :])[:, 0]
    cnt.index_add_(0, ri, (d < a[ri]).to(torch.int64))


@torch.no_grad()
def chunked_strict_counts(gallery, q: torch.Tensor, z: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """CA's rank: #{x : d(X_x, q_r) < d(z_r, q_r)} per row r of ``q`` and ``z`` (R, D) over the whole gallery, ties
    not counted, item ``exclude[r]`` left out (None: none). Compared as :func:`chunked_positions` does: the fast
    formula where it decides, :func:`robustbench_dml.knn.canonical_distances` at near-ties, so an item equal to
    ``z_r`` (its own clean copy, a duplicate) ties it exactly."""
    r = q.shape[0]
    a, lo, hi = _strict_band(gallery, q, z)
    rows = torch.arange(r, device=q.device)
    cnt = torch.zeros(r, dtype=torch.int64, device=q.device)
    for start, stop in gallery.blocks(r):
        d2 = gallery.block_sq_distances(q, start, stop)  # (R, c)
        if exclude is not None:
            hit = (exclude >= start) & (exclude < stop)
            d2[rows[hit], exclude[hit] - start] = math.inf
        cnt += (d2 < lo).sum(dim=1)
        ri, ci = torch.nonzero((d2 >= lo) & (d2 <= hi), as_tuple=True)
        if ri.numel():
            _add_closer_ties(cnt, gallery, q, a, ri, ci + start)
    return cnt


@torch.no_grad()
def sorted_sq_rows(gallery, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``q`` (R, D)'s fast squared distances to the whole gallery, sorted ascending (R, N) float32, and
    the gallery index at each place (R, N) int32: the table :func:`sorted_strict_counts` counts from, for rows that
    stay fixed while something else moves (CA's queries)."""
    # peak 16 bytes per entry: the distances (freed once sorted) or the int32 copy, the sorted values, int64 indices
    srt, order = torch.sort(torch.cat([gallery.block_sq_distances(q, s, e) for s, e in gallery.blocks(q.shape[0])],
                                      dim=1), dim=1)
    return srt, order.to(torch.int32)


@torch.no_grad()
def sorted_strict_counts(gallery, q: torch.Tensor, z: torch.Tensor, srt: torch.Tensor,
                         order: torch.Tensor) -> torch.Tensor:
    """:func:`chunked_strict_counts` without exclusion, from ``q``'s :func:`sorted_sq_rows` table (``srt``,
    ``order``): two binary searches per row and the canonical distances of the near-ties only, instead of a pass over
    the gallery. The same counts: an item below the tie band counts, one above does not, whichever rounding of the
    fast formula placed it there (the band is wider than the formula's error), and the band is decided exactly."""
    r = q.shape[0]
    a, lo, hi = _strict_band(gallery, q, z)
    first = torch.searchsorted(srt, lo.contiguous(), right=False)[:, 0]  # #{d2 < lo}
    width = torch.searchsorted(srt, hi.contiguous(), right=True)[:, 0] - first  # #{lo <= d2 <= hi}
    cnt = first.clone()
    total = int(width.sum())
    if total:
        ri = torch.repeat_interleave(torch.arange(r, device=q.device), width)
        start = torch.repeat_interleave(first - (width.cumsum(0) - width), width)
        _add_closer_ties(cnt, gallery, q, a, ri, order[ri, start + torch.arange(total, device=q.device)].long())
    return cnt


@torch.no_grad()
def chunked_row_hinge(gallery, z: torch.Tensor, a: torch.Tensor, sign: str,
                      grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """For each query row z_i (B, D) and thresholds a (B, M): the hinge sums over the whole gallery and the part
    of their gradient w.r.t. z_i that flows through the distances B_x = d(z_i, X_x).

    sign "+": H_im = sum_x max(0, a_im - B_x); sign "-": H_im = sum_x max(0, B_x - a_im).
    Returns (H (B, M) float64, active (B, M) int64 = #{x : B_x < a} for "+" / #{x : B_x > a} for "-",
    V (B, D) = sum_m sum_{x active} (z_i - X_x) / B_x), so that with a = A(z) the gradient of sum_m H_im is
    s * (sum_m active_im grad A_im - V_i), s = +1 for "+" and -1 for "-". A distance of exactly 0 contributes no
    gradient (as torch.cdist). One pass over the gallery in chunks: memory O(B x chunk). ``grad=False``: V is None
    (H and active unchanged, without the second matrix product; a gradient-free search needs only H).
    """
    b, m = a.shape
    h = torch.zeros(b, m, dtype=torch.float64, device=z.device)
    active = torch.zeros(b, m, dtype=torch.int64, device=z.device)
    wsum = torch.zeros(b, 1, dtype=z.dtype, device=z.device)
    wx = torch.zeros_like(z)
    for start, stop in gallery.blocks(b):
        dist = gallery.block_distances(z, start, stop)  # (B, c)
        w = None
        for j in range(m):
            t = a[:, j:j + 1]
            # 1.0 where x is active, else 0.0: float arithmetic only (bool masks mixed with floats are several
            # times slower on CPU); the sums below equal those over the boolean mask exactly
            on = (t - dist if sign == "+" else dist - t).sign_().clamp_min_(0.0)
            cnt = on.sum(dim=1).to(torch.int64)
            sd = torch.mul(dist, on).sum(dim=1, dtype=torch.float64)
            h[:, j] += (t[:, 0].double() * cnt - sd) if sign == "+" else (sd - t[:, 0].double() * cnt)
            active[:, j] += cnt
            if grad:
                wm = on.div_(dist).nan_to_num_(nan=0.0, posinf=0.0)  # 1 / B_x where active; 0 at distance 0
                w = wm if w is None else w.add_(wm)
        if grad:
            wsum += w.sum(dim=1, keepdim=True)
            wx.addmm_(w, gallery.embeddings[start:stop])
    return h, active, z * wsum - wx if grad else None


@torch.no_grad()
def chunked_extremes(gallery, z: torch.Tensor, labels: torch.Tensor, exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(farthest item with a different label, nearest item with the same label) per query, gallery indices (B,).

    ``exclude`` (B,): a gallery index removed from the same-label set (self), or None to keep every item.
    A query with no same-label item gets index -1.
    """
    b = z.shape[0]
    neg_d = torch.full((b,), -1.0, dtype=z.dtype, device=z.device)
    neg_i = torch.full((b,), -1, dtype=torch.int64, device=z.device)
    pos_d = torch.full((b,), float("inf"), dtype=z.dtype, device=z.device)
    pos_i = torch.full((b,), -1, dtype=torch.int64, device=z.device)
    # float arithmetic only (bool masks mixed with floats are several times slower on CPU): `far` exceeds every
    # distance, so subtracting it drops an item below every candidate of the max and adding it lifts one above
    # every candidate of the min; the candidates' own values are untouched, so the winners are those of masking
    far = 2.0 * (float(z.detach().norm(dim=1).max()) + math.sqrt(gallery.max_sq_norm)) + 1.0
    query_labels = labels.to(z.dtype).view(-1, 1)  # class ids as floats: exact below 2^24
    gallery_labels = gallery.labels.to(z.dtype)
    rows = torch.arange(b, device=z.device)
    for start, stop in gallery.blocks(b):
        dist = gallery.block_distances(z, start, stop)
        # 1.0 where the item has the query's label, else 0.0 (labels differ by at least 1)
        same = (gallery_labels[start:stop].view(1, -1) - query_labels).abs_().neg_().add_(1.0).clamp_min_(0.0)
        v, i = torch.sub(dist, same, alpha=far).max(dim=1)
        upd = v > neg_d  # a row whose block is all same-label keeps its -1
        neg_d = torch.where(upd, v, neg_d)
        neg_i = torch.where(upd, i + start, neg_i)
        dp = torch.add(dist, same.neg_().add_(1.0), alpha=far)
        if exclude is not None:
            hit = (exclude >= start) & (exclude < stop)
            dp[rows[hit], exclude[hit] - start] = far
        v, i = dp.min(dim=1)
        upd = (v < pos_d) & (v < far)  # a lifted item is never a positive
        pos_d = torch.where(upd, v, pos_d)
        pos_i = torch.where(upd, i + start, pos_i)
    return neg_i, pos_i


def pair_distance(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d(z_i, x_i) = ||z_i - x_i||_2 row-wise, differentiable (zero gradient at zero distance)."""
    return torch.linalg.vector_norm(z - x, dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# The attack base class


class RankingAttack:
    """Base class of the ranking attacks: selection, loss, measurement and success, run through one PGD loop.

    Subclasses set ``id`` and ``keys`` and implement :meth:`select`, :meth:`loss`, :meth:`measure` and
    :meth:`succeeded`; :meth:`prepare` (fixed per-pass data) and :meth:`max_rows` (memory) are optional.
    ``state`` is a dict of per-query tensors (first dimension B) so a batch can be split into passes.

    Args:
        model: an embedding network, pixels [0,1] -> raw embeddings (normalised here).
        eps, alpha, steps: L-infinity radius and step in pixel units, PGD iterations (1 = FGSM with step eps).
        robrank_compat: reproduce the reference's quirks (``docs/protocol.md``) instead of the correct behaviour.
        memory_budget: bytes allowed for fixed per-batch data; larger batches are attacked in row passes.
        engine: None for the published sign-PGD (last iterate), or an :class:`attacks.engine.Engine` (APGD
            schedule, restarts, best iterate, gradient-free check); the corrected protocol only.
    """

    id: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    #: how the reference's quirks change this attack (:mod:`robustbench_dml.protocols`): "" not at all; "measure"
    #: the same PGD run measured differently (``measure(..., robrank_compat=True)`` gives the reference's
    #: values); "targets" different targets, so each protocol needs its own run
    robrank_quirk: ClassVar[str] = ""
    #: bumped whenever the attack's per-query results or success rule change, so that resumed evaluations
    #: recompute it (the evaluation's state files record it)
    revision: ClassVar[int] = 1
    #: how the per-query losses form the one scalar sign-PGD differentiates ("mean", or "sum" where the reference
    #: sums); the sign of the gradient is the same either way, the reported loss is not
    reduction: ClassVar[str] = "mean"

    def __init__(self, model: nn.Module, *, eps: float, alpha: float, steps: int, robrank_compat: bool = False,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, engine=None):
        if eps < 0 or alpha < 0:
            raise UserError(f"eps and alpha must be >= 0 (got eps={eps}, alpha={alpha})")
        if steps < 0 or int(steps) != steps:
            raise UserError(f"steps must be a non-negative integer (got {steps})")
        self.model = model
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.robrank_compat = bool(robrank_compat)
        self.memory_budget = int(memory_budget)
        if engine is not None and self.robrank_compat:
            raise UserError(f"{self.id}: a strong engine runs the corrected protocol only (drop robrank_compat)")
        self.engine = engine

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
                f"robrank_compat={self.robrank_compat})")

    # -- pieces the subclasses provide ------------------------------------------------------------------------
    def select(self, z0: torch.Tensor, labels: torch.Tensor, self_idx: torch.Tensor, gallery,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def prepare(self, state: dict[str, torch.Tensor], gallery) -> Any:
        """Per-pass data that stays fixed during PGD (computed once, without grad)."""
        return None

    def loss(self, z: torch.Tensor, state: dict[str, torch.Tensor], fixed: Any, gallery, t: int) -> torch.Tensor:
        """Per-query loss (B,) at PGD step ``t``, minimised; differentiable w.r.t. ``z`` (B, D)."""
        raise NotImplementedError

    def measure(self, z: torch.Tensor, state: dict[str, torch.Tensor], gallery, *, clean: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def succeeded(self, clean: dict[str, torch.Tensor], adv: dict[str, torch.Tensor],
                  state: dict[str, torch.Tensor], gallery) -> torch.Tensor:
        """(B,) bool; ``state["z_adv"]`` holds the adversarial embeddings."""
        raise NotImplementedError

    def max_rows(self, n: int) -> int | None:
        """Rows per PGD pass (None: the whole batch)."""
        return None

    def retarget(self, state: dict[str, torch.Tensor], gallery, j: int) -> dict[str, torch.Tensor] | None:
        """``state`` with the attack's ``j``-th alternative target (j >= 1) for a targeted run of the strong engine
        (:attr:`attacks.engine.Engine.targets`), as APGD-T attacks the other classes in turn: the loss then pursues
        the same scored goal through another target, and :meth:`measure` still reads the published selection.
        None (the default): the attack has no natural alternative."""
        return None

    # -- the shared driver ------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(x), dim=1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, gallery, *, generator: torch.Generator,
                 query_index: torch.Tensor | None = None) -> AttackOutput:
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (use robustbench_dml.runtime.generator)")
        device = gallery.embeddings.device
        x0 = images.detach().to(device=device, dtype=torch.float32)
        labels = torch.as_tensor(labels).to(device=device, dtype=torch.int64)
        with eval_mode(self.model):
            with torch.no_grad():
                z0 = self.embed(x0)
                if query_index is None:
                    self_idx = gallery.knn(z0, 1)[1][:, 0].to(device)
                else:
                    self_idx = torch.as_tensor(query_index).to(device=device, dtype=torch.int64)
                state = self.select(z0, labels, self_idx, gallery, generator)
                state.update(z0=z0, labels=labels, self_idx=self_idx)
                clean = self.measure(z0, state, gallery, clean=True)
            extra: dict[str, Any] = {}
            if self.engine is not None:
                x_adv, adv, success, iterations, extra = self.engine.run(self, x0, state, clean, gallery, generator)
                adv_robrank = None
            else:
                x_adv, z_last, iterations = self._run_pgd(x0, state, gallery)
                with torch.no_grad():
                    z_adv = self.embed(x_adv)
                    state.update(z_last=z_last, z_adv=z_adv)
                    adv = self.measure(z_adv, state, gallery, clean=False)
                    adv_robrank = (self.measure(z_adv, state, gallery, clean=False, robrank_compat=True)
                                   if self.robrank_quirk == "measure" and not self.robrank_compat else None)
                    success = self.succeeded(clean, adv, state, gallery)
        to_cpu = lambda d: {k: v.detach().to("cpu", torch.float64) for k, v in d.items()}  # noqa: E731
        selection = {k: v.detach().cpu() for k, v in state.items() if k.startswith("sel_")}
        return AttackOutput(x_adv=x_adv.to(images.device), per_query=to_cpu(adv), success=success.detach().cpu(),
                            clean=to_cpu(clean), selection=selection, iterations=iterations,
                            per_query_robrank=None if adv_robrank is None else to_cpu(adv_robrank),
                            extra={"parts": {k: to_cpu(v) for k, v in extra["parts"].items()},
                                   "check": to_cpu(extra["check"]), "check_gradient": to_cpu(extra["check_gradient"]),
                                   "diagnostics": {"randomised": extra["diagnostics"]["randomised"],
                                                   "no_gradient": extra["diagnostics"]["no_gradient"].cpu()}}
                            if extra else {})

    def passes(self, state: dict[str, torch.Tensor], gallery,
               fixed: bool = True) -> Iterator[tuple[int, int, dict[str, torch.Tensor], Any]]:
        """The batch's row passes (:meth:`max_rows`): (start, stop, the state's rows, their :meth:`prepare` data,
        None when not ``fixed``)."""
        b = state["z0"].shape[0]
        rows = max(1, min(self.max_rows(len(gallery)) or b, b))
        for s in range(0, b, rows):
            sub = {k: v[s:s + rows] for k, v in state.items()}
            yield s, min(b, s + rows), sub, self.prepare(sub, gallery) if fixed else None

    def _run_pgd(self, x0: torch.Tensor, state: dict[str, torch.Tensor], gallery) -> tuple[torch.Tensor, torch.Tensor, int]:
        xs, zs, iterations = [], [], 0
        for s, e, sub, fixed in self.passes(state, gallery):
            last: list[torch.Tensor] = [sub["z0"]]
            counter = [0]

            def objective(x: torch.Tensor, sub=sub, fixed=fixed, last=last, counter=counter) -> torch.Tensor:
                z = self.embed(x)
                last[0] = z.detach()
                t = counter[0]
                counter[0] += 1
                losses = self.loss(z, sub, fixed, gallery, t)
                return losses.sum() if self.reduction == "sum" else losses.mean()

            res = pgd(objective, x0[s:e], eps=self.eps, alpha=self.alpha, steps=self.steps)
            xs.append(res.x_adv)
            zs.append(last[0])
            iterations = res.iterations
        return torch.cat(xs), torch.cat(zs), iterations


def flip_success(clean_good: torch.Tensor, adv_good: torch.Tensor) -> torch.Tensor:
    """Success = the defender's outcome was good on the clean image and is not after the attack."""
    return clean_good & ~adv_good


def require_pool(n: int, needed: int, what: str) -> int:
    """K = floor(0.01 N) for CA-/QA-, checked against the number of items the attack needs from the pool."""
    k = top_fraction_limit(n)
    if k < max(1, needed):
        raise UserError(f"{what} needs floor(0.01 x gallery size) >= {max(1, needed)} but the gallery has {n} items; "
                        f"use a gallery of at least {100 * max(1, needed)} items")
    return k


AttackFactory = Callable[..., RankingAttack]


@torch.no_grad()
def top1_correct(gallery, z: torch.Tensor, labels: torch.Tensor, self_idx: torch.Tensor) -> torch.Tensor:
    """Whether the nearest gallery item other than self (masked by index) has the query's true label (B,) bool."""
    _, idx = gallery.knn(z, 1, exclude=self_idx)
    return gallery.labels[idx[:, 0].to(gallery.labels.device)].to(labels.device) == labels


@torch.no_grad()
def class_in_top(gallery, z: torch.Tensor, labels: torch.Tensor, self_idx: torch.Tensor, k: int) -> torch.Tensor:
    """Whether any of the ``k`` nearest gallery items other than self (masked by index) has the query's label, (B,)
    bool."""
    _, idx = gallery.knn(z, k, exclude=self_idx)
    return (gallery.labels[idx.to(gallery.labels.device)].to(labels.device) == labels.view(-1, 1)).any(dim=1)


def recall_broken(clean_correct: torch.Tensor, gallery, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Success of the recall attacks (ES, LTM, GTM): the clean top-1 was right and after the attack no item of the
    query's class is left in its top 1% (the K + 1 nearest non-self items, K = floor(0.01 N), the places CA/QA
    call the top 1%). Stricter than "the top-1 turned wrong", which every model measured concedes on almost every
    query (GTM's whole goal is that flip); the per-query 0/100 results keep the top-1 definition."""
    k = top_fraction_limit(len(gallery)) + 1
    kept = class_in_top(gallery, state["z_adv"], state["labels"], state["self_idx"], k)
    return clean_correct.to(kept.device) & ~kept


def recall_percent(correct: torch.Tensor) -> torch.Tensor:
    """0/100 per query (recall@1 in percent once averaged)."""
    return correct.double() * 100.0
