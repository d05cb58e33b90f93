"""Small pure losses shared by the defenses. Inputs are embeddings; losses normalise where the spec says so."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MARGIN = 0.2  # gamma of the papers, for metric N


def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``||a_i - b_i + 1e-6||_2``, as torch's ``pairwise_distance`` (the reference triplet loss)."""
    return F.pairwise_distance(a, b, p=2.0, eps=1e-6)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = MARGIN) -> torch.Tensor:
    """``mean_i max(0, d(a_i,p_i) - d(a_i,n_i) + margin)`` on the given (already normalised) vectors."""
    return F.relu(pairwise_distance(anchor, positive) - pairwise_distance(anchor, negative) + margin).mean()


def hardness(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-triplet ``H = d(a,p) - d(a,n)`` in [-2, 2] on normalised vectors."""
    return pairwise_distance(anchor, positive) - pairwise_distance(anchor, negative)


def ics_loss(anchor: torch.Tensor, anchor_adv: torch.Tensor, positive: torch.Tensor,
             margin: float = 0.0) -> torch.Tensor:
    """HM's Intra-Class Structure term (unweighted): ``mean_i max(0, d(a_i, a~_i) - d(a_i, p_i) + margin)`` with
    clean anchor ``a``, adversarial anchor ``a~`` and clean positive ``p`` (normalised vectors; margin 0 in the
    paper). The caller multiplies by lambda."""
    return triplet_loss(anchor, anchor_adv, positive, margin)


WEIGHTINGS = ("slides", "slides_detached", "released", "research_build")
#: earlier names of the weightings, still accepted (a checkpoint's config records the alias it was given)
WEIGHTING_ALIASES = {"paper": "slides_detached"}


def attention_weights(d: torch.Tensor, lam: float, weighting: str = "slides_detached") -> torch.Tensor:
    """CA-TRIDE's per-pair weights ``w_i`` of the weighted distance (``d``: (N,) distances in [0, 2]).

    * ``"slides"`` (the ICML'24 paper and its authors' slides, taken literally): ``w_i = exp(-lambda (d_i - min_j
      d_j))``, emphasis on the *closest* (top-ranked) pairs, the gradient flowing through the weights (the shift by
      the minimum is a common factor and cancels). ``dW/dd_i = (w_i / sum w)(1 - lambda (d_i - W))`` is negative
      for every ``d_i > W + 1/lambda``: raising W by sign-PGD, which gives every image a full step whatever its
      weight, moves those pairs *against* the objective, so on a trained model its adversary can ease triplets.
    * ``"slides_detached"`` (the authors' research build's choice with the slides' weights; formerly ``"paper"``):
      the same weights, **detached**: ``dW/dd_i = w_i / sum w > 0`` for every pair, each image moves the way the
      objective asks. Under sign-PGD the per-image factor ``w_i / sum w`` is removed by the sign, so lambda never
      changes a step's direction; it acts only through the *value* of C (CAP's stop at C >= 0, ANP's
      ``relu(C)`` and ``gamma_c``).
    * ``"released"`` (the fork's released ``pnp.py``): ``w_i = exp(lambda (d_i - max_j d_j))``, emphasis on the
      *farthest* pairs, weights carrying gradient (the defect that makes its adversary ease most triplets).
    * ``"research_build"`` (the compiled module shipped beside it): ``w_i = exp(-lambda relu(d_i - 2 sigma))`` with
      ``sigma`` the standard deviation of ``d``, detached (lambda acts as for ``"slides_detached"``).
    """
    weighting = WEIGHTING_ALIASES.get(weighting, weighting)
    if weighting == "slides":
        return torch.exp(-lam * (d - d.detach().min()))
    if weighting == "slides_detached":
        return torch.exp(-lam * (d - d.min())).detach()
    if weighting == "released":
        return torch.exp(lam * (d - d.detach().max()))
    if weighting == "research_build":
        sigma = d.detach().std() if len(d) > 1 else d.new_zeros(())
        return torch.exp(-lam * F.relu(d - 2 * sigma)).detach()
    raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


def weighted_mean(d: torch.Tensor, lam: float, weighting: str = "slides_detached") -> torch.Tensor:
    """``d_w = sum_i w_i d_i / sum_i w_i`` with :func:`attention_weights`: the plain mean at lambda = 0; as
    lambda grows, the min (``"slides"``, ``"slides_detached"``, ``"research_build"`` below its threshold) or the
    max (``"released"``).
    Stable for any lambda (the exponent is never positive)."""
    w = attention_weights(d, lam, weighting)
    return (w * d).sum() / w.sum()


def collapseness(d_ap: torch.Tensor, d_an: torch.Tensor, lam: float,
                 weighting: str = "slides_detached") -> torch.Tensor:
    """``C = d_w(A, P) - d_w(A, N)`` (> 0: the batch is collapsed, positives farther than negatives)."""
    return weighted_mean(d_ap, lam, weighting) - weighted_mean(d_an, lam, weighting)


def mean_smallest(d: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Mean of the ``k`` smallest entries of the vector ``d`` (default ``max(1, len(d) // 2)``)."""
    k = max(1, len(d) // 2) if k is None else k
    return torch.topk(d, k, largest=False, sorted=False).values.mean()


def top_ranked_loss(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float = 0.04) -> torch.Tensor:
    """CA-TRIDE's L_TR: ``relu(mean_small(d_ap) - mean_small(d_an) + margin)`` over the floor(N/2) smallest
    anchor-positive and anchor-negative distances of the batch."""
    return F.relu(mean_smallest(d_ap) - mean_smallest(d_an) + margin)


def multi_similarity_loss(emb: torch.Tensor, labels: torch.Tensor, *, pos_weight: float = 2.0,
                          neg_weight: float = 40.0, margin: float | None = 0.1,
                          threshold: float = 0.5) -> torch.Tensor:
    """Multi-Similarity loss (Wang et al., CVPR'19) as MDProp uses it (Roth et al.'s framework).

    ``emb``: (B, D) raw embeddings (normalised here; cosine similarity ``s``). Per anchor i, positives are the
    other same-label rows and negatives the different-label rows; with ``margin`` set, pairs are first mined:
    negatives with ``s_in + margin > min_p s_ip`` and positives with ``s_ip - margin < max_n s_in``. Anchors
    left without a mined positive or negative are skipped. Loss per anchor:
    ``1/a log(1 + sum_p exp(-a (s_ip - t))) + 1/b log(1 + sum_n exp(b (s_in - t)))`` with a = ``pos_weight``,
    b = ``neg_weight``, t = ``threshold``; the mean over kept anchors (0 with a graph if none is kept).
    """
    z = F.normalize(emb, dim=1)
    s = z @ z.t()
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    if margin is not None:
        sd = s.detach()
        big = torch.full_like(sd, float("inf"))
        min_pos = torch.where(pos, sd, big).amin(dim=1, keepdim=True)
        max_neg = torch.where(neg, sd, -big).amax(dim=1, keepdim=True)
        neg = neg & (sd + margin > min_pos)
        pos = pos & (sd - margin < max_neg)
    keep = pos.any(dim=1) & neg.any(dim=1)
    if not bool(keep.any()):
        return s.sum() * 0.0
    zero = torch.zeros(n, 1, dtype=s.dtype, device=s.device)
    ninf = torch.full_like(s, -float("inf"))
    pos_term = torch.logsumexp(torch.cat([zero, torch.where(pos, -pos_weight * (s - threshold), ninf)], 1), 1)
    neg_term = torch.logsumexp(torch.cat([zero, torch.where(neg, neg_weight * (s - threshold), ninf)], 1), 1)
    per_anchor = pos_term / pos_weight + neg_term / neg_weight
    return per_anchor[keep].mean()
