"""EST, Embedding-Shifted Triplet (Zhou et al., ECCV'20, arXiv 2002.11293; RobRank ``rc2f2d`` / ``rres18d``).

Threat model: L-infinity ball of radius ``eps`` in [0,1] pixel space (clipped to [0,1]), robrank PGD without
random start. The adversary (ES) moves *every* image of the SPC-2 batch (anchors included, 2N images) as far
as possible from its own clean embedding, with no direction given:
``J(x) = -sum_j ||e(x_j) - e(x0_j)||``, minimised. The model then trains on the adversarial batch with the vanilla
triplet loss, *mining the triplets on the adversarial embeddings*.

Per step: 1 no-grad eval forward of the clean batch (logging: ``loss_clean``, and the reference embedding of
ES), then ``steps`` forward/backward pairs of the attack (eval mode, on the unwrapped module), then one
train-mode forward/backward. Cost: ``1 + steps`` forwards and ``steps`` backwards besides the training
forward/backward.

Quirks of the reference and our choices:
* ES jitter: in the first attack iteration the reference embedding gets ``1e-7 * {-1, 0, +1}`` noise so that the
  distance gradient is not degenerate at ``x = x0``; we draw it from ``ctx.generator`` (first iteration only)
  and use the reference ``pairwise_distance`` (with its 1e-6 offset), which already keeps the gradient finite.
* BatchNorm: ``rres18d`` sets ``is_advtrain``, which disables the BN freeze of the other RN18 defenses, so BN
  uses batch statistics in the training forward. ``bn_live=True`` (default, the reference and the published EST
  rows) keeps that, and, as the reference, runs the step's first clean no-grad forward in *train* mode, so the
  running statistics follow clean and adversarial batches alike (an EMA of about half each); the attack's
  reference embedding and ``loss_clean`` still come from an eval-mode forward (one extra no-grad forward, only
  on backbones with BN). ``bn_live=False`` freezes BN as for vanilla/ACT/HM. c2f2 has no BN: unaffected.
* ``adv_gain`` (per step): the triplet loss on the adversarial embeddings minus the same loss (same triplets,
  mined on the adversarial embeddings) on the clean ones: positive when the adversary makes training harder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attacks.pgd import eval_mode, pgd
from defenses.base import (DEFENSES, Defense, DefenseConfig, StepContext, StepResult, has_batchnorm, preset_threat,
                           unwrap)
from defenses.losses import MARGIN, pairwise_distance, triplet_loss
from defenses.miners import MINERS


@dataclass(frozen=True)
class ESTConfig(DefenseConfig):
    """``eps``/``alpha``: pixel budget and PGD step; ``steps``: PGD iterations (eta); ``miner``: triplet miner
    (EST[R] = "random"); ``margin``: triplet margin gamma; ``jitter``: ES first-iteration jitter scale;
    ``bn_live``: BN uses batch statistics in training (reference) instead of frozen."""

    eps: float = 77 / 255
    alpha: float = 3 / 255
    steps: int = 32
    miner: str = "random"
    margin: float = MARGIN
    jitter: float = 1e-7
    bn_live: bool = True

    def __post_init__(self):
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self.eps}, {self.alpha}, {self.steps}")
        MINERS.get(self.miner)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "ESTConfig":
        t = preset_threat(preset)
        return cls(**{"eps": t.eps, "alpha": t.alpha, "steps": t.steps, **overrides})


def embedding_shift_attack(net, x: torch.Tensor, reference: torch.Tensor, *, eps: float, alpha: float,
                           steps: int, jitter: float = 1e-7, generator: torch.Generator | None = None):
    """ES-PGD: maximise ``sum_j ||e(x~_j) - reference_j||`` over the eps-ball around ``x`` (B, C, H, W) in
    [0,1]; ``reference`` (B, D) is the clean normalised embedding. Runs ``net`` as given (the caller sets eval
    mode). Returns the engine's :class:`~attacks.pgd.PGDResult`."""
    ref0 = reference.detach()
    if jitter > 0 and steps > 0:
        noise = torch.randint(-1, 2, ref0.shape, generator=generator, device="cpu").to(ref0)
        ref_first = ref0 + jitter * noise
    else:
        ref_first = ref0
    calls = [0]

    def objective(xa: torch.Tensor) -> torch.Tensor:
        ref = ref_first if calls[0] == 0 else ref0
        calls[0] += 1
        return -pairwise_distance(F.normalize(net(xa), dim=1), ref).sum()

    return pgd(objective, x, eps=eps, alpha=alpha, steps=steps)


@DEFENSES.register("est")
class EST(Defense):
    id = "est"
    Config = ESTConfig

    def train_mode(self, model) -> None:
        if self.config.bn_live:
            model.train()
        else:
            super().train_mode(model)

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        cfg = self.config
        net = unwrap(model)
        live_bn = cfg.bn_live and has_batchnorm(net)
        if live_bn:  # the reference's clean forward in train mode: BN running statistics see the clean batch
            with torch.no_grad():
                net(images)
        with eval_mode(net), torch.no_grad():
            z_clean = F.normalize(net(images), dim=1)
        with eval_mode(net):
            res = embedding_shift_attack(net, images, z_clean, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps,
                                         jitter=cfg.jitter, generator=ctx.generator)
        z = F.normalize(model(res.x_adv), dim=1)
        anc, pos, neg = MINERS.get(cfg.miner)(z.detach(), labels, ctx.generator, margin=cfg.margin)
        loss = triplet_loss(z[anc], z[pos], z[neg], cfg.margin)
        with torch.no_grad():
            loss_clean = float(triplet_loss(z_clean[anc], z_clean[pos], z_clean[neg], cfg.margin))
            stats = {
                "loss_clean": loss_clean,
                "adv_gain": float(loss.detach()) - loss_clean,
                "shift": float((z.detach() - z_clean).norm(dim=1).mean()),
                "iterations": float(res.iterations),
            }
        return StepResult(loss=loss, n_forward=2 + int(live_bn) + res.iterations, n_backward=1 + res.iterations,
                          stats=stats)
