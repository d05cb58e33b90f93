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
