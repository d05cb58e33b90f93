"""SPC-2 triplet miners (``defenses.md`` §0.3).

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
