"""Embedding Shift ES (Zhou et al., ECCV'20, the untargeted attack behind EST; RobRank).

Perturbed image: the query; no selection. Loss: -sum_i ||embed(x_i) - e0_i + 1e-6||_2 (maximise the displacement
from the clean embedding e0; RobRank's ``pairwise_distance`` epsilon), with e0 + 1e-7 as the reference at the first
step so the gradient is not zero there.

Results: ``ES:D`` = ||embed(x_adv) - e0||_2 per query (distance on the unit sphere, 0..2); ``ES:R`` = 0/100 per
query, whether the nearest gallery item other than self (masked by gallery index) has the true label.
Success (:func:`attacks.base.recall_broken`): the clean top-1 is correct and after the attack no item of the
query's class is left in its top 1%.

``robrank_compat=True`` reproduces quirk Q1: ES:D is measured at the embedding of the last forward pass inside
the PGD loop (iterate T-1, so ~0 with one step) with the 1e-6 epsilon, as the reference reports it.
"""

from __future__ import annotations

import torch

from attacks.base import (
    ATTACKS,
    RankingAttack,
    recall_broken,
    recall_percent,
    top1_correct,
)


@ATTACKS.register("ES")
class EmbeddingShift(RankingAttack):
    """ES: push each query's embedding as far as possible from its clean embedding."""

    id = "ES"
    keys = ("ES:D", "ES:R")
    robrank_quirk = "measure"

    def loss(self, z, state, fixed, gallery, t):
        ref = state["z0"] + 1e-7 if t == 0 else state["z0"]
        return -torch.linalg.vector_norm(z - ref + 1e-6, dim=1)

    def measure(self, z, state, gallery, *, clean, robrank_compat=None):
        z0 = state["z0"]
        if clean:
            shift = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        elif self.robrank_compat if robrank_compat is None else robrank_compat:
            shift = torch.linalg.vector_norm(state["z_last"] - z0 + 1e-6, dim=1)
        else:
            shift = torch.linalg.vector_norm(z - z0, dim=1)
        r1 = recall_percent(top1_correct(gallery, z, state["labels"], state["self_idx"]))
        return {"ES:D": shift, "ES:R": r1}

    def succeeded(self, clean, adv, state, gallery):
        return recall_broken(clean["ES:R"] > 0, gallery, state)
