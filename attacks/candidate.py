"""Candidate attacks CA+ / CA- (Zhou et al., "Adversarial Ranking Attack and Defense", ECCV'20; RobRank T-PAMI).

Perturbed image: the candidate c (a gallery member). Its W queries Q_w are clean gallery embeddings:
CA+ draws them uniformly from [0, N) with replacement ("rank c high for arbitrary queries", self possible);
CA- draws W positions with replacement from the K = floor(0.01 N) nearest non-self items of c ("queries that
already rank c near the top").

Loss per candidate: A_w = d(embed(c), Q_w), B_{x,w} = d(X_x, Q_w) over the whole gallery;
CA+: mean_{x,w} max(0, A_w - B_{x,w}); CA-: mean_{x,w} max(0, B_{x,w} - A_w). B does not depend on c, so each
pass sorts it once and every PGD step costs a binary search (value and exact gradient from prefix sums).
Rows that do not fit half of ``memory_budget`` (distances, sorted, float64 and stored prefix sums: 20 bytes per entry
at peak) are attacked in several passes; the images are independent in eval mode, so the result is the same up to
float rounding. The other half holds, where it fits, the batch's sorted squared distances with their gallery
indices, from which every measurement after the clean one counts by binary search.

Result ``CA+`` / ``CA-``: 100 * mean_w #{x : B_{x,w} < A_w} / N, percent of the gallery (strict count; ties,
decided on the canonical distance (:func:`attacks.base.chunked_strict_counts`), do not count). The clean self stays
in the gallery: a perturbed c is compared with its own clean copy, which the clean c (the same item) is not (with
two differently rounded formulas on the two sides, the clean copy used to count as closer on about half the
candidates, and whether it did depended on the machine). Success (:func:`attacks.base.rank_flip_success`, on the
integer sum of the W counts): CA+ moves c from outside to inside the top 1% of its queries' rankings (mean strict
count <= K = floor(0.01 N)); CA- moves it from inside the top 1% to the far half (mean count >= N / 2).
"""

from __future__ import annotations

import torch

from attacks.base import (
    ATTACKS,
    RankingAttack,
    chunked_strict_counts,
    pair_distance,
    rank_flip_success,
    require_pool,
    sort_with_prefix,
    sorted_hinge,
    sorted_sq_rows,
    sorted_strict_counts,
)
from robustbench_dml.errors import UserError


class CandidateAttack(RankingAttack):
    """CA+ (``sign="+"``) or CA- (``sign="-"``) with ``W`` queries per candidate."""

    sign = "+"

    def __init__(self, model, *, eps: float, alpha: float, steps: int, W: int = 1, **kwargs):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, **kwargs)
        if int(W) != W or W < 1:
            raise UserError(f"{self.id}: W must be a positive integer (got {W})")
        self.W = int(W)

    def select(self, z0, labels, self_idx, gallery, generator):
        n, b = len(gallery), z0.shape[0]
        if self.sign == "+":
            sel = torch.randint(n, (b, self.W), generator=generator)
        else:
            k = require_pool(n, 1, "CA-")
            _, near = gallery.knn(z0, k, exclude=self_idx)
            pos = torch.randint(k, (b, self.W), generator=generator)
            sel = near.cpu().gather(1, pos)
        state = {"sel_queries": sel.to(z0.device)}
        # the queries stay fixed, so one sorted table of their distances turns every later measurement (each step of
        # a strong engine, each query of its search) into binary searches; where memory allows (8 bytes per entry
        # kept, 16 while it is sorted)
        if 16 * b * self.W * n <= self.memory_budget // 2:  # half: the passes' own sorted rows need the rest
            srt, order = sorted_sq_rows(gallery, gallery.embeddings[state["sel_queries"].reshape(-1)])
            state.update(rank_sq=srt.view(b, self.W, n), rank_order=order.view(b, self.W, n))
        return state

    def max_rows(self, n: int) -> int:
        # peak per (row, query, item), while the prefix sums are stored: distances 4 + sorted 4 + float64 sums 8
        # + stored prefix 4 bytes (the sort's int64 indices, 8, are freed before the sums exist); half the budget,
        # the batch's counting table (select) may hold the other half
        return max(1, self.memory_budget // 2 // (20 * self.W * n + 1))

    def _fixed_rows(self, state, gallery) -> torch.Tensor:
        q = gallery.embeddings[state["sel_queries"].reshape(-1)]  # (R*W, D)
        return q

    def prepare(self, state, gallery):
        q = self._fixed_rows(state, gallery)
        rows = torch.cat([gallery.block_distances(q, s, e) for s, e in gallery.blocks(q.shape[0])], dim=1)
        srt, prefix = sort_with_prefix(rows)
        return q, srt, prefix

    def loss(self, z, state, fixed, gallery, t):
        q, srt, prefix = fixed
        zw = z.repeat_interleave(self.W, dim=0)  # (R*W, D)
        a = pair_distance(zw, q)
        terms, _ = sorted_hinge(a, srt, prefix, self.sign)
        return terms.view(-1, self.W).mean(dim=1)

    def measure(self, z, state, gallery, *, clean):
        q = self._fixed_rows(state, gallery)
        zw = z.repeat_interleave(self.W, dim=0)
        if clean or "rank_sq" not in state:  # the clean measurement leaves the candidate's own clean copy out
            own = state["self_idx"].repeat_interleave(self.W) if clean else None
            cnt = chunked_strict_counts(gallery, q, zw, exclude=own)
        else:
            n = len(gallery)
            srt, order = state["rank_sq"].reshape(-1, n), state["rank_order"].reshape(-1, n)
            cnt = sorted_strict_counts(gallery, q, zw, srt, order)
        rank = cnt.view(-1, self.W).double().mean(dim=1)
        return {self.id: 100.0 * rank / len(gallery)}

    def succeeded(self, clean, adv, state, gallery):
        return rank_flip_success(self.sign, clean[self.id], adv[self.id], len(gallery), self.W)


@ATTACKS.register("CA+")
class CandidateAttackPlus(CandidateAttack):
    """CA+: pull the candidate up the rankings of W random queries."""

    id = "CA+"
    keys = ("CA+",)
    sign = "+"
    revision = 2  # integer success rule, canonical ties


@ATTACKS.register("CA-")
class CandidateAttackMinus(CandidateAttack):
    """CA-: push the candidate down the rankings of W queries that currently rank it in their top 1%."""

    id = "CA-"
    keys = ("CA-",)
    sign = "-"
    revision = 3  # 3: integer success rule, canonical ties; 2: pushed to the far half (was: out of the top 1%)
