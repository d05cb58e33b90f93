"""Greedy Top-1 Translocation GTT (RobRank T-PAMI).

Perturbed image: the query. Selection on the clean ranking with self masked (by gallery index): a_i and b_i, the
1st and 2nd nearest non-self items. Loss: the QA- loss with M = 1 and candidate a_i,
mean_x max(0, d(z_i, X_x) - d(z_i, X_{a_i})), which pushes the original top-1 down the ranking (chunked pass
each step, memory O(B x chunk)).

Result ``GTT``: 0/100 per query, whether a_i is still among the 4 nearest non-self items (``retain@4``; clean
value 100 by construction). ``ID-Retain@1`` (a_i still the top-1) is reported in ``AttackOutput.clean`` /
``per_query`` under ``GTT:ID@1`` for inspection; it does not enter the scores. Success: a_i leaves the top 4.
"""

from __future__ import annotations

import torch

from attacks.base import ATTACKS, RankingAttack, flip_success, pair_distance
from attacks.query import row_hinge_loss


@ATTACKS.register("GTT")
class GreedyTop1Translocation(RankingAttack):
    """GTT: push the query's original nearest neighbour out of its top 4."""

    id = "GTT"
    keys = ("GTT",)

    def select(self, z0, labels, self_idx, gallery, generator):
        _, idx = gallery.knn(z0, 2, exclude=self_idx)
        idx = idx.to(z0.device)
        return {"sel_top1": idx[:, 0], "sel_top2": idx[:, 1]}

    def retarget(self, state, gallery, j):
        """Four rivals to pull ahead of a_i: the query's non-self neighbours of clean places j+1 .. j+4 (a_i is
        place 0), a hinge max(0, d(z, X_r) - d(z, X_a)) each; four of them ahead of a_i meet GTT's goal."""
        if j + 4 >= len(gallery):
            return None
        _, idx = gallery.knn(state["z0"], j + 4, exclude=state["self_idx"])
        return {**state, "alt_rivals": idx[:, j:j + 4].to(state["z0"].device)}

    def loss(self, z, state, fixed, gallery, t):
        if "alt_rivals" in state:
            x = gallery.embeddings
            da = pair_distance(z, x[state["sel_top1"]]).unsqueeze(1)
            dr = pair_distance(z.unsqueeze(1), x[state["alt_rivals"]])
            return torch.relu(dr - da).sum(dim=1)
        cands = gallery.embeddings[state["sel_top1"]].unsqueeze(1)
        return row_hinge_loss(z, cands, gallery, "-")

    def measure(self, z, state, gallery, *, clean):
        _, idx = gallery.knn(z, 4, exclude=state["self_idx"])
        idx = idx.to(z.device)
        a = state["sel_top1"].view(-1, 1)
        return {"GTT": (idx == a).any(dim=1).double() * 100.0, "GTT:ID@1": (idx[:, :1] == a).any(dim=1).double() * 100.0}

    def succeeded(self, clean, adv, state, gallery):
        return flip_success(clean["GTT"] > 0, adv["GTT"] > 0)
