"""ACT, Anti-Collapse Triplet (Zhou et al., arXiv 2106.03614, T-PAMI'24; RobRank ``rc2f2p`` / ``rres18p``,
``pnp_training_step``).

Threat model: L-infinity ball of radius ``eps`` in [0,1] pixel space, robrank PGD without random start. The
adversary perturbs the positive and the negative of each mined triplet (2N index copies; the anchors are
never touched) so that their embeddings collapse onto each other,
``J(p~, n~) = mean_i ||e(p~_i) - e(n~_i)||`` (minimised, no early stop); the model learns to separate them
again with ``L_T(e(x_a), e(p~), e(n~); 0.2)``, clean anchors from the training forward. No clean-triplet term.

Per step: 1 no-grad eval forward of the clean batch (2N) for mining, ``steps`` forward/backward pairs on 2N
images (eval mode, unwrapped module), and one train-mode forward/backward of ``[x_a; p~; n~]`` (3N). The
reference runs the training forward as two calls (``[p~; n~]`` and ``x_a``); with BN frozen that is the same
computation as one call on the concatenation, which we do. Cost: ``2 + steps`` forwards, ``1 + steps``
backwards. BN frozen (as ``rres18p``).

Quirk: the reference calls the miner with ``margin_euclidean = 1.0`` for metric N, harmless for the random
and softhard miners but five times the semihard window; ``miner_margin`` defaults to the correct 0.2 (set 1.0
for the reference behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attacks.pgd import eval_mode, pgd
from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, preset_threat, unwrap
from defenses.losses import MARGIN, pairwise_distance, triplet_loss
from defenses.miners import MINERS


@dataclass(frozen=True)
class ACTConfig(DefenseConfig):
    """``eps``/``alpha``/``steps``: training adversary; ``miner``: "random" (ACT[R], default) or "softhard"
    (ACT[S]), ...; ``margin``: triplet margin; ``miner_margin``: margin passed to the miner (reference 1.0)."""

    eps: float = 77 / 255
    alpha: float = 3 / 255
    steps: int = 32
    miner: str = "random"
    margin: float = MARGIN
    miner_margin: float = MARGIN

    def __post_init__(self):
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self.eps}, {self.alpha}, {self.steps}")
        MINERS.get(self.miner)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "ACTConfig":
        t = preset_threat(preset)
        return cls(**{"eps": t.eps, "alpha": t.alpha, "steps": t.steps, **overrides})


def pn_collapse(net, x_pos: torch.Tensor, x_neg: torch.Tensor, *, eps: float, alpha: float, steps: int):
    """ACT's ``pncollapse``: PGD on the 2N images ``[x_pos; x_neg]`` minimising the mean distance between the
    normalised embeddings of each positive/negative pair. Returns ``(p~, n~, PGDResult)``."""
    n = len(x_pos)

    def objective(xa: torch.Tensor) -> torch.Tensor:
        e = F.normalize(net(xa), dim=1)
        return pairwise_distance(e[:n], e[n:]).mean()

    res = pgd(objective, torch.cat([x_pos, x_neg]), eps=eps, alpha=alpha, steps=steps)
    return res.x_adv[:n], res.x_adv[n:], res


@DEFENSES.register("act")
class ACT(Defense):
    id = "act"
    Config = ACTConfig

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        cfg = self.config
        net = unwrap(model)
        with eval_mode(net), torch.no_grad():
            z_clean = F.normalize(net(images), dim=1)
        anc, pos, neg = MINERS.get(cfg.miner)(z_clean, labels, ctx.generator, margin=cfg.miner_margin)
        with eval_mode(net):
            p_adv, n_adv, res = pn_collapse(net, images[pos], images[neg], eps=cfg.eps, alpha=cfg.alpha,
                                            steps=cfg.steps)
        n = len(anc)
        z = F.normalize(model(torch.cat([images[anc], p_adv, n_adv])), dim=1)
        za, zp, zn = z[:n], z[n:2 * n], z[2 * n:]
        loss = triplet_loss(za, zp, zn, cfg.margin)
        with torch.no_grad():
            loss_clean = float(triplet_loss(z_clean[anc], z_clean[pos], z_clean[neg], cfg.margin))
            stats = {
                "loss_clean": loss_clean,
                "adv_gain": float(loss.detach()) - loss_clean,
                "d_pn_clean": float(pairwise_distance(z_clean[pos], z_clean[neg]).mean()),
                "d_pn_adv": float(pairwise_distance(zp, zn).mean()),
                "iterations": float(res.iterations),
            }
        return StepResult(loss=loss, n_forward=2 + res.iterations, n_backward=1 + res.iterations, stats=stats)
