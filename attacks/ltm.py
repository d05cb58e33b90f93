"""Learning-to-Misrank LTM (Chen et al., "Universal Adversarial Attack on Deep Metric Learning"/"Learning to
misrank", CVPR'20; RobRank's inline version).

Perturbed image: the query. Loss: sum_i relu(max_{x: y_x != y_i} d(z_i, X_x) - min_{x: y_x = y_i, x != self}
d(z_i, X_x)): pull the query toward its farthest negative and away from its nearest positive until every positive
is farther than every negative. Both extremes are found by a chunked pass over the gallery at every step
(memory O(B x chunk)); the gradient flows through the two selected distances.

Result ``LTM``: 0/100 per query, whether the nearest gallery item other than self (masked by index) has the true
label. Success (:func:`attacks.base.recall_broken`): correct before the attack, and no item of the query's class
left in its top 1% after it.

``robrank_compat=True`` reproduces quirk Q3: self stays in the positive set (its distance ~0 at the start, so the
loss first pushes the query away from its own clean copy).
"""

from __future__ import annotations

import torch

from attacks.base import (
    ATTACKS,
    RankingAttack,
    chunked_extremes,
    pair_distance,
    recall_broken,
    recall_percent,
    top1_correct,
)


@ATTACKS.register("LTM")
class LearningToMisrank(RankingAttack):
    """LTM: make every same-class item rank below every other-class item."""

    id = "LTM"
    keys = ("LTM",)
    robrank_quirk = "targets"
    reduction = "sum"  # the reference sums over the batch

    def retarget(self, state, gallery, j):
        """The negative pulled toward is fixed to the query's ``j``-th nearest item of another class (clean
        ranking) instead of its farthest one: the nearest positive is still pushed away, one rival at a time."""
        from attacks.gtm import nearest_unmatching_k

        near = nearest_unmatching_k(gallery, state["z0"], state["labels"], state["self_idx"], j)
        return {**state, "alt_negative": near[:, j - 1]}

    def loss(self, z, state, fixed, gallery, t):
        exclude = None if self.robrank_compat else state["self_idx"]
        neg, pos = chunked_extremes(gallery, z.detach(), state["labels"], exclude)
        if "alt_negative" in state:
            neg = state["alt_negative"]
        has = (neg >= 0) & (pos >= 0)
        x = gallery.embeddings
        dn = pair_distance(z, x[neg.clamp_min(0)])
        dp = pair_distance(z, x[pos.clamp_min(0)])
        return torch.relu(dn - dp) * has

    def measure(self, z, state, gallery, *, clean):
        return {"LTM": recall_percent(top1_correct(gallery, z, state["labels"], state["self_idx"]))}

    def succeeded(self, clean, adv, state, gallery):
        return recall_broken(clean["LTM"] > 0, gallery, state)
