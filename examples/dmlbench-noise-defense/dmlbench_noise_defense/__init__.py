"""Random-noise training, the simplest input-space defense: each image is moved to a uniformly random point of the
L-infinity ball of radius ``eps`` before the triplet loss; no attack, one forward and one backward per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from defenses.base import Defense, DefenseConfig, StepContext, StepResult
from defenses.losses import MARGIN, triplet_loss
from defenses.miners import MINERS


@dataclass(frozen=True)
class NoiseConfig(DefenseConfig):
    eps: float = 77 / 255
    margin: float = MARGIN

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> "NoiseConfig":
        return cls(**{"eps": 77 / 255 if preset == "28" else 8 / 255, **overrides})


class Noise(Defense):
    id = "noise"
    Config = NoiseConfig

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        # the noise is drawn on the CPU from the harness's generator, then moved: one seed, one run, any device
        noise = torch.rand(images.shape, generator=ctx.generator).to(images.device, images.dtype)
        noisy = (images + (2 * noise - 1) * self.config.eps).clamp(0, 1)
        z = F.normalize(model(noisy), dim=1)
        anc, pos, neg = MINERS.get("random")(z.detach(), labels, ctx.generator, margin=self.config.margin)
        loss = triplet_loss(z[anc], z[pos], z[neg], self.config.margin)
        return StepResult(loss=loss, n_forward=1, n_backward=1, stats={"eps": self.config.eps})
