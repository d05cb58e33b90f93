"""Vanilla triplet training, the undefended baseline (RobRank ``ptripletN``).

Per step: one train-mode forward of the SPC-2 batch, triplets mined on the detached normalised embeddings,
``L_T(a, p, n; 0.2)`` on normalised vectors. Cost: 1 forward + 1 backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult
from defenses.losses import MARGIN, triplet_loss
from defenses.miners import MINERS


@dataclass(frozen=True)
class VanillaConfig(DefenseConfig):
    miner: str = "random"
    margin: float = MARGIN


@DEFENSES.register("vanilla")
class Vanilla(Defense):
    id = "vanilla"
    Config = VanillaConfig

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        z = F.normalize(model(images), dim=1)
        anc, pos, neg = MINERS.get(self.config.miner)(z.detach(), labels, ctx.generator, margin=self.config.margin)
        loss = triplet_loss(z[anc], z[pos], z[neg], self.config.margin)
        return StepResult(loss=loss, n_forward=1, n_backward=1)
