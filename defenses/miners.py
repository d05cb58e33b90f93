"""SPC-2 triplet miners (``docs/training.md``, Data).

Batches are laid out ``[c1, c1, c2, c2, ...]``: anchors at even indices ``0, 2, 4, ...`` and their positives at
``2i+1``. A miner maps (normalised embeddings without gradient, labels, generator) to three aligned index
vectors ``(anc, pos, neg)`` of length batch/2, with ``anc = [0, 2, 4, ...]`` for every miner.
"""

from __future__ import annotations

import torch

from robustbench_dml.registry import Registry

MINERS: Registry = Registry("miner")


def _choice(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly drawn True column per row of a boolean (R, N) mask (rows must have a True)."""
    u = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
    return torch.where(mask, u, torch.full_like(u, -1.0)).argmax(dim=1)


def _with_fallback(*masks: torch.Tensor) -> torch.Tensor:
    """Row-wise: the first mask that has a True in that row (the last mask is used as is)."""
    out = masks[-1].clone()
    for m in reversed(masks[:-1]):
        ok = m.any(dim=1, keepdim=True)
        out = torch.where(ok, m, out)
    return out


def anchors(n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    anc = torch.arange(0, n - n % 2, 2, device=device)
    return anc, anc + 1


@MINERS.register("random")
def random_miner(emb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                 margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spc2-random (R): positive ``2i+1``; negative uniform over different-label items (any item if none)."""
    anc, pos = anchors(len(labels), labels.device)
    diff = labels[anc, None] != labels[None, :]
    neg = _choice(_with_fallback(diff, torch.ones_like(diff)), generator)
    return anc, pos, neg


def _pdist(emb: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances between the L2-normalised rows (metric N), no gradient."""
    with torch.no_grad():
        z = torch.nn.functional.normalize(emb.detach(), dim=1)
        return torch.cdist(z, z).clamp_min_(0.0)


@MINERS.register("semihard")
def semihard_miner(emb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spc2-semihard (M): positive ``2i+1``; negative uniform over the semihard band
    ``d_ap < d_an`` and ``d_ap - d_an + margin > 0`` with a different label; fallback any different-label item,
    then any item. (The reference compares squared distances for the first condition: same set.)"""
    anc, pos = anchors(len(labels), labels.device)
    d = _pdist(emb)
    d_ap = d[anc, pos][:, None]
    d_an = d[anc]
    diff = labels[anc, None] != labels[None, :]
    band = (d_ap.pow(2) < d_an.pow(2)) & (d_ap - d_an + margin > 0) & diff
    neg = _choice(_with_fallback(band, diff, torch.ones_like(diff)), generator)
    return anc, pos, neg


@MINERS.register("ghard")
def ghard_miner(emb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, margin: float = 0.2, *,
                epoch: int = 0, max_epochs: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CA-TRIDE's spc2-ghard: semihard negatives with the epoch margin
    :func:`ghard_margin` (``margin`` is its epoch-0 value); the positive is always ``2i+1``."""
    return semihard_miner(emb, labels, generator, margin=ghard_margin(epoch, max_epochs, margin))


def ghard_margin(epoch: int, max_epochs: int, base: float = 0.2) -> float:
    """``base * (1 - e/(2E))^2``: 0.2 at epoch 0 falling to 0.05 at epoch E."""
    return base * (1.0 - epoch / (2.0 * max(max_epochs, 1))) ** 2


@MINERS.register("softhard")
def softhard_miner(emb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spc2-softhard (S), both ends mined (``margin`` unused). Negative: uniform over different-label items
    closer than the farthest same-label item; fallback any different-label item, then any item. Positive:
    uniform over same-label items farther than the nearest different-label item; fallback the same-label mask
    (which contains the anchor itself, as in the reference); ``2i+1`` when the batch has no negative."""
    anc, pos0 = anchors(len(labels), labels.device)
    d = _pdist(emb)[anc]
    same = labels[anc, None] == labels[None, :]
    diff = ~same
    inf = torch.full_like(d, float("inf"))
    max_ap = torch.where(same, d, -inf).amax(dim=1, keepdim=True)
    min_an = torch.where(diff, d, inf).amin(dim=1, keepdim=True)
    soft_neg = diff & (d.pow(2) < max_ap.pow(2))
    neg = _choice(_with_fallback(soft_neg, diff, torch.ones_like(diff)), generator)
    soft_pos = same & (d.pow(2) > min_an.pow(2))
    pos = _choice(_with_fallback(soft_pos, same), generator)
    pos = torch.where(diff.any(dim=1), pos, pos0)
    return anc, pos, neg


@MINERS.register("hard")
def hard_miner(emb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
               margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spc2-hard (H): positive ``2i+1``; negative the nearest different-label item (lowest index on ties;
    any-item fallback, excluding the anchor, when the batch has a single class). Deterministic."""
    anc, pos = anchors(len(labels), labels.device)
    d = _pdist(emb)[anc]
    diff = labels[anc, None] != labels[None, :]
    not_self = torch.ones_like(diff)
    not_self[torch.arange(len(anc), device=diff.device), anc] = False
    mask = _with_fallback(diff, not_self if len(labels) > 1 else torch.ones_like(diff))
    neg = torch.where(mask, d, torch.full_like(d, float("inf"))).argmin(dim=1)
    return anc, pos, neg


@MINERS.register("distance")
def distance_miner(emb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spc2-distance (D), distance-weighted sampling on the unit sphere (Wu et al., ICCV'17): positive
    ``2i+1``; negative drawn with probability proportional to ``1/q(d)``, where
    ``q(d) ~ d^(D-2) (1 - d^2/4)^((D-3)/2)`` is the density of pairwise distances of uniform points on
    the sphere S^(D-1). Same-label items get weight 0 (uniform over all items if the batch has one class).
    Distances are clamped to [1e-4, 2 - 1e-4] so the log-weights stay finite (the reference lets them
    overflow and repairs NaNs afterwards). The weights are computed in float64 and normalised by max."""
    anc, pos = anchors(len(labels), labels.device)
    dim = emb.shape[1]
    d = _pdist(emb)[anc].double().clamp(1e-4, 2.0 - 1e-4)
    log_w = (2.0 - dim) * torch.log(d) - ((dim - 3.0) / 2.0) * torch.log(1.0 - 0.25 * d.pow(2))
    diff = labels[anc, None] != labels[None, :]
    log_w = torch.where(diff, log_w, torch.full_like(log_w, -float("inf")))
    has_neg = diff.any(dim=1, keepdim=True)
    log_w = torch.where(has_neg, log_w, torch.zeros_like(log_w))
    w = torch.exp(log_w - log_w.amax(dim=1, keepdim=True))
    neg = torch.multinomial(w.cpu(), 1, generator=generator).squeeze(1).to(labels.device)
    return anc, pos, neg
