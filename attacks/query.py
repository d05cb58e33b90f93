"""Query attacks QA+ / QA- (Zhou et al., ECCV'20; RobRank T-PAMI).

Perturbed image: the query q (a gallery member). Its M candidates C_m are clean gallery items: QA+ draws them
uniformly from [0, N) with replacement; QA- takes M distinct items at random from the K = floor(0.01 N) nearest
non-self items of q (without replacement).

Loss per query: A_m = d(embed(q), C_m), B_x = d(X_x, embed(q)) over the whole gallery (self and the candidates
included); QA+: mean_{x,m} max(0, A_m - B_x); QA-: mean_{x,m} max(0, B_x - A_m). B moves with q, so each PGD step
makes one chunked pass over the gallery that returns the hinge value and its gradient w.r.t. the embedding
(memory O(B x M x chunk)); autograd carries that gradient through the normalisation and the model.

Result ``QA+`` / ``QA-``: 100 * mean_m pos(C_m) / N, where pos is the 0-based position in the query's stable
ascending ranking of the whole gallery (self not removed; ties, decided on the canonical distance, broken by
index: :func:`attacks.base.chunked_positions`), percent of the gallery. Success
(:func:`attacks.base.rank_flip_success`, on the integer sum of the M positions): QA+ brings the candidates (mean
position) from outside into the top 1% (position <= K = floor(0.01 N)); QA- pushes them from inside it to the far
half (mean position >= N / 2).
"""

from __future__ import annotations

import torch

from attacks.base import (
    ATTACKS,
    RankingAttack,
    chunked_positions,
    chunked_row_hinge,
    pair_distance,
    rank_flip_success,
    require_pool,
)
from robustbench_dml.errors import UserError


def row_hinge_loss(z: torch.Tensor, cands: torch.Tensor, gallery, sign: str) -> torch.Tensor:
    """Per-query mean_{x,m} hinge of QA (sign "+" or "-"), differentiable w.r.t. ``z`` (B, D).

    ``cands`` (B, M, D) are fixed gallery embeddings. The value and gradient equal the dense relu formulation.
    Without a gradient to carry (a random search), the value alone: the gradient's gallery pass is skipped.
    """
    b, m, _ = cands.shape
    n = len(gallery)
    a = pair_distance(z.unsqueeze(1), cands)  # (B, M), differentiable
    if not a.requires_grad:
        h, _, _ = chunked_row_hinge(gallery, z.detach(), a, sign, grad=False)
        return (h.sum(dim=1) / (n * m)).to(z.dtype)
    h, active, v = chunked_row_hinge(gallery, z.detach(), a.detach(), sign)
    s = 1.0 if sign == "+" else -1.0
    # d/dz sum_m H_m = s * (sum_m active_m * grad A_m - V)
    surrogate = s * ((active.to(z.dtype) * a).sum(dim=1) - (v * z).sum(dim=1))
    value = (h.sum(dim=1) / (n * m)).to(z.dtype)
    return value + (surrogate - surrogate.detach()) / (n * m)


class QueryAttack(RankingAttack):
    """QA+ (``sign="+"``) or QA- (``sign="-"``) with ``M`` candidates per query."""

    sign = "+"

    def __init__(self, model, *, eps: float, alpha: float, steps: int, M: int = 1, **kwargs):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, **kwargs)
        if int(M) != M or M < 1:
            raise UserError(f"{self.id}: M must be a positive integer (got {M})")
        self.M = int(M)

    def select(self, z0, labels, self_idx, gallery, generator):
        n, b = len(gallery), z0.shape[0]
        if self.sign == "+":
            sel = torch.randint(n, (b, self.M), generator=generator)
        else:
            k = require_pool(n, self.M, "QA-")
            _, near = gallery.knn(z0, k, exclude=self_idx)
            perm = torch.rand(b, k, generator=generator).argsort(dim=1)[:, : self.M]
            sel = near.cpu().gather(1, perm)
        return {"sel_candidates": sel.to(z0.device)}

    def loss(self, z, state, fixed, gallery, t):
        cands = gallery.embeddings[state["sel_candidates"]]
        return row_hinge_loss(z, cands, gallery, self.sign)

    def measure(self, z, state, gallery, *, clean):
        pos = chunked_positions(gallery, z, state["sel_candidates"])
        return {self.id: 100.0 * pos.double().mean(dim=1) / len(gallery)}

    def succeeded(self, clean, adv, state, gallery):
        return rank_flip_success(self.sign, clean[self.id], adv[self.id], len(gallery), self.M)


@ATTACKS.register("QA+")
class QueryAttackPlus(QueryAttack):
    """QA+: pull M random candidates to the top of the query's ranking."""

    id = "QA+"
    keys = ("QA+",)
    sign = "+"
    revision = 2  # integer success rule, canonical ties


@ATTACKS.register("QA-")
class QueryAttackMinus(QueryAttack):
    """QA-: push M of the query's current top-1% neighbours down its ranking."""

    id = "QA-"
    keys = ("QA-",)
    sign = "-"
    revision = 3  # 3: integer success rule, canonical ties; 2: pushed to the far half (was: out of the top 1%)
