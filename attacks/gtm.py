"""Greedy Top-1 Misranking GTM (RobRank T-PAMI).

Perturbed image: the query. Selection on the clean ranking with self masked (by gallery index): l_i, the label of
the nearest non-self item (the *predicted* label), and u_i, the nearest non-self item whose label differs from
l_i. Loss: mean_i d(z_i, X_{u_i}): pull the query onto the closest "wrong" item so its top-1 changes class.

Result ``GTM``: 0/100 per query, whether the nearest non-self item has the query's *true* label. Success
(:func:`attacks.base.recall_broken`): correct before the attack, and no item of the query's class left in its top 1%
after it (the top-1 flip alone is GTM's goal and succeeds on almost every query of every model measured).

``robrank_compat=True`` reproduces quirk Q2: the target is the gallery item whose index equals u_i's position
within the unmatching sub-vector, i.e. #{x < u_i : y_x != l_i} (self counted when its label differs from l_i),
as the reference's argmin over a masked vector does.
"""

from __future__ import annotations

import torch

from attacks.base import (
    ATTACKS,
    RankingAttack,
    pair_distance,
    recall_broken,
    recall_percent,
    top1_correct,
)


@torch.no_grad()
def nearest_unmatching(gallery, z: torch.Tensor, predicted: torch.Tensor, self_idx: torch.Tensor) -> torch.Tensor:
    """Per query, the nearest gallery item (self excluded by index) whose label differs from ``predicted``; -1 if
    there is none. Chunked: memory O(B x chunk)."""
    best_d = torch.full((z.shape[0],), float("inf"), dtype=z.dtype, device=z.device)
    best_i = torch.full((z.shape[0],), -1, dtype=torch.int64, device=z.device)
    for start, stop in gallery.blocks(z.shape[0]):
        dist = gallery.block_distances(z, start, stop)
        idx = torch.arange(start, stop, device=z.device).view(1, -1)
        bad = (gallery.labels[start:stop].view(1, -1) == predicted.view(-1, 1)) | (idx == self_idx.view(-1, 1))
        v, i = dist.masked_fill(bad, float("inf")).min(dim=1)
        upd = v < best_d
        best_d = torch.where(upd, v, best_d)
        best_i = torch.where(upd, i + start, best_i)
    return best_i


@torch.no_grad()
def nearest_unmatching_k(gallery, z: torch.Tensor, predicted: torch.Tensor, self_idx: torch.Tensor,
                         k: int) -> torch.Tensor:
    """Per query, the ``k`` nearest gallery items (self excluded by index) whose label differs from ``predicted``,
    nearest first, (B, k); -1 where there are fewer. Chunked: memory O(B x (chunk + k))."""
    b = z.shape[0]
    best_d = torch.full((b, k), float("inf"), dtype=z.dtype, device=z.device)
    best_i = torch.full((b, k), -1, dtype=torch.int64, device=z.device)
    for start, stop in gallery.blocks(b):
        dist = gallery.block_distances(z, start, stop)
        idx = torch.arange(start, stop, device=z.device).view(1, -1)
        bad = (gallery.labels[start:stop].view(1, -1) == predicted.view(-1, 1)) | (idx == self_idx.view(-1, 1))
        d = torch.cat([best_d, dist.masked_fill(bad, float("inf"))], dim=1)
        i = torch.cat([best_i, idx.expand(b, -1)], dim=1)
        best_d, pick = d.topk(k, dim=1, largest=False, sorted=True)
        best_i = i.gather(1, pick)
    return torch.where(torch.isinf(best_d), -1, best_i)


@torch.no_grad()
def submask_position(gallery_labels: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Quirk Q2: #{x < target_i : y_x != predicted_i}, the position of ``target`` inside the unmatching sub-vector."""
    out = torch.zeros_like(target)
    n = gallery_labels.shape[0]
    chunk = max(1, 2**22 // max(1, target.shape[0]))
    for start in range(0, n, chunk):
        lab = gallery_labels[start:start + chunk].view(1, -1)
        idx = torch.arange(start, start + lab.shape[1], device=lab.device).view(1, -1)
        out += ((lab != predicted.view(-1, 1)) & (idx < target.view(-1, 1))).sum(dim=1)
    return out


@ATTACKS.register("GTM")
class GreedyTop1Misranking(RankingAttack):
    """GTM: pull the query toward its nearest item of another (predicted) class."""

    id = "GTM"
    keys = ("GTM",)
    robrank_quirk = "targets"

    def select(self, z0, labels, self_idx, gallery, generator):
        _, top = gallery.knn(z0, 1, exclude=self_idx)
        predicted = gallery.labels[top[:, 0].to(gallery.labels.device)].to(z0.device)
        target = nearest_unmatching(gallery, z0, predicted, self_idx)
        if self.robrank_compat:
            target = torch.where(target >= 0, submask_position(gallery.labels.to(z0.device), predicted, target), target)
        return {"sel_target": target, "predicted": predicted}

    def retarget(self, state, gallery, j):
        """The ``j``-th next nearest item of another class than the predicted one (the published target is the
        nearest)."""
        near = nearest_unmatching_k(gallery, state["z0"], state["predicted"], state["self_idx"], j + 1)
        return {**state, "sel_target": near[:, j]}

    def loss(self, z, state, fixed, gallery, t):
        target = state["sel_target"]
        d = pair_distance(z, gallery.embeddings[target.clamp_min(0)])
        return d * (target >= 0)

    def measure(self, z, state, gallery, *, clean):
        return {"GTM": recall_percent(top1_correct(gallery, z, state["labels"], state["self_idx"]))}

    def succeeded(self, clean, adv, state, gallery):
        return recall_broken(clean["GTM"] > 0, gallery, state)
