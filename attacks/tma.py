"""Targeted Mismatch Attack TMA (Tolias, Radenovic and Chum, "Targeted mismatch adversarial attack: query with a
flower to retrieve the tower", ICCV'19; as run by RobRank).

Perturbed image: the query. Target: one gallery item per query drawn uniformly from [0, N) (it may be self or a
same-class item). Loss: mean_i (1 - cos(embed(q_i), X_{t_i})) (cosine whatever the metric).

Result ``TMA``: cos(embed(q_adv), X_t) per query, in [-1, 1] (higher = the attack worked better).
Success: the target becomes more similar to the query than the clean query's nearest non-self neighbour was
(adv cosine > clean top-1 cosine) while it was not so before the attack. Both cosines are computed by the same
expression on the same kind of operands, so a target that is the nearest neighbour (or a duplicate of it) has
exactly the neighbour's cosine on every machine and counts as "not so before": a float comparison that is at a
boundary only where the two values are computed from the same vectors, hence bit-equal.
"""

from __future__ import annotations

import torch

from attacks.base import ATTACKS, RankingAttack, flip_success


@ATTACKS.register("TMA")
class TargetedMismatch(RankingAttack):
    """TMA: pull the query's embedding onto a random gallery embedding."""

    id = "TMA"
    keys = ("TMA",)
    revision = 2  # the clean neighbour's cosine by the same expression as the result's

    def select(self, z0, labels, self_idx, gallery, generator):
        sel = torch.randint(len(gallery), (z0.shape[0],), generator=generator).to(z0.device)
        _, nearest = gallery.knn(z0, 1, exclude=self_idx)
        nn_cos = self.measure(z0, {"sel_target": nearest[:, 0].to(z0.device)}, gallery, clean=True)["TMA"]
        return {"sel_target": sel, "nn_cos": nn_cos}

    def loss(self, z, state, fixed, gallery, t):
        target = gallery.embeddings[state["sel_target"]]
        return 1.0 - (z * target).sum(dim=1)

    def measure(self, z, state, gallery, *, clean):
        target = gallery.embeddings[state["sel_target"]]
        return {"TMA": (z * target).sum(dim=1)}

    def succeeded(self, clean, adv, state, gallery):
        nn_cos = state["nn_cos"].to("cpu", torch.float64)
        return flip_success(clean["TMA"].cpu().double() <= nn_cos, adv["TMA"].cpu().double() <= nn_cos)
