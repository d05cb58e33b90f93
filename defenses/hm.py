"""HM, Hardness Manipulation, with LGA and ICS (Zhou et al., CVPR'22, arXiv 2203.01439; RobRank
``hm_training_step``).

Threat model: L-infinity ball of radius ``eps`` in [0,1] pixel space, robrank PGD without random start. The
adversary perturbs anchor, positive and negative of each source triplet (3N index copies) until the
triplet's hardness ``H = d(a,p) - d(a,n)`` (normalised embeddings, in [-2, 2]) reaches a destination
``H_D``: the "ET" objective ``J = mean_i min(0, H~_i - H_D,i)^2`` is minimised. Triplets already at or above
``H_D`` get a zero gradient and stay bit-identical. ``HM[H_S, H_S]`` is regular training; a constant
``H_D = 2`` is min-max (Madry) training.

Destinations (``destination``): ``"lga"`` (default; the Linear Gradual Adversary: the scalar
``-gamma * l_bar``, ``l_bar = clip(prev_loss, 0, u) / u``, ``u = lga_u = 0.2``, where ``prev_loss`` is the
adversarial triplet loss of the previous step, starting at 2.0), the paper's other pseudo-hardness functions
``"lga_square"`` (``-gamma l_bar^2``), ``"lga_sqrt"`` (``-gamma sqrt(l_bar)``), ``"lga_bias"``
(``H_benign + xi (1 - l_bar)``), ``"benign"`` (the hardness of the ``desth`` triplet with the same anchor,
on the clean embeddings) and ``"const"`` (``hd_const``).

ICS (``ics=True``): ``loss += lambda * mean relu(d(a, a~) - d(a, p))`` with the clean anchor/positive from a
train-mode forward with gradients; lambda ``ics_lambda`` (None: 0.5, or 0.05 on SOP as the paper's appendix).
The LGA state is the loss *before* the ICS term. The default is the paper's headline row ``HM[S, g_LGA] & ICS``
(RobRank ``ghmetsmi``).

Per step: 1 no-grad eval forward (2N) for mining and logging; at most ``steps`` forward/backward pairs on 3N
images (eval mode, unwrapped module), with the reference's two stops: no iteration at all when
``srch == desth`` (string equality, whatever the destination), and a break once ``|J_t - J_{t-1}| < 1e-7``
(the first comparison is against -1); then one train-mode forward/backward of ``[a~; p~; n~]`` (3N), plus
``[a; p]`` (2N) with ICS. The reference runs the ICS forward as a separate call; with BN frozen one call on
the concatenation is the same computation. Cost: ``2 + iterations`` forwards, ``1 + iterations`` backwards.

Differences from the reference: with an LGA-type destination the destination miner's triplets are ignored by
the reference but still mined (consuming RNG); we do not mine them (``lga_bias`` and ``benign`` do). The KL
and L2 alignment variants are dead in the reference and not offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from attacks.pgd import eval_mode, pgd
from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, preset_threat, unwrap
from defenses.losses import MARGIN, hardness, ics_loss, triplet_loss
from defenses.miners import MINERS

DESTINATIONS = ("lga", "lga_square", "lga_sqrt", "lga_bias", "benign", "const")
INITIAL_PREV_LOSS = 2.0


@dataclass(frozen=True)
class HMConfig(DefenseConfig):
    """``eps``/``alpha``/``steps``: training adversary; ``srch``/``desth``: source and destination miners;
    ``destination``: see the module docstring; ``lga_u``: LGA clip u; ``xi``: g_B bias; ``hd_const``:
    constant H_D; ``ics``: add ICS; ``ics_lambda``: None = by dataset (0.5, SOP 0.05); ``ics_margin``: 0;
    ``margin``: triplet margin gamma (also the semihard miner margin); ``early_stop_tol``: 1e-7."""

    eps: float = 77 / 255
    alpha: float = 3 / 255
    steps: int = 32
    srch: str = "softhard"
    desth: str = "semihard"
    destination: str = "lga"
    lga_u: float = MARGIN
    xi: float = 0.1
    hd_const: float = 0.0
    ics: bool = True
    ics_lambda: float | None = None
    ics_margin: float = 0.0
    margin: float = MARGIN
    early_stop_tol: float = 1e-7

    def __post_init__(self):
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self.eps}, {self.alpha}, {self.steps}")
        if self.destination not in DESTINATIONS:
            raise ValueError(f"unknown HM destination {self.destination!r}; known: {', '.join(DESTINATIONS)}")
        if self.lga_u <= 0:
            raise ValueError(f"lga_u must be > 0, got {self.lga_u}")
        MINERS.get(self.srch)
        MINERS.get(self.desth)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "HMConfig":
        t = preset_threat(preset)
        return cls(**{"eps": t.eps, "alpha": t.alpha, "steps": t.steps, **overrides})


def lga_level(prev_loss: float, u: float = MARGIN) -> float:
    """``l_bar = clip(prev_loss, 0, u) / u`` in [0, 1]."""
    return min(max(prev_loss, 0.0), u) / u


def ics_lambda_for(dataset: str, value: float | None = None) -> float:
    """ICS weight: ``value`` if given, else 0.05 on SOP and 0.5 elsewhere (HM appendix)."""
    if value is not None:
        return value
    return 0.05 if str(dataset).lower() == "sop" else 0.5


def hardness_manipulation(net, xa: torch.Tensor, xp: torch.Tensor, xn: torch.Tensor, h_dest: torch.Tensor, *,
                          eps: float, alpha: float, steps: int, tol: float = 1e-7):
    """HM's PGD (ET objective) on the 3N images ``[xa; xp; xn]`` toward the destination hardness ``h_dest``
    (scalar or (N,)). Early stop once ``|J_t - J_{t-1}| < tol`` (first comparison against -1). Returns
    ``(a~, p~, n~, PGDResult)``."""
    n = len(xa)

    def objective(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(net(x), dim=1)
        h = hardness(e[:n], e[n:2 * n], e[2 * n:])
        return torch.clamp(h - h_dest, max=0.0).pow(2).mean()

    def stop(t: int, value: float, prev: float | None) -> bool:
        return abs(value - (-1.0 if prev is None else prev)) < tol

    res = pgd(objective, torch.cat([xa, xp, xn]), eps=eps, alpha=alpha, steps=steps, stop=stop)
    x = res.x_adv
    return x[:n], x[n:2 * n], x[2 * n:], res


@DEFENSES.register("hm")
class HM(Defense):
    id = "hm"
    Config = HMConfig

    def __init__(self, config: HMConfig | None = None, *, preset: str = "28", **overrides: Any):
        super().__init__(config, preset=preset, **overrides)
        self.prev_loss = INITIAL_PREV_LOSS

    def state_dict(self) -> dict[str, Any]:
        return {"prev_loss": self.prev_loss}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - {"prev_loss"}
        if extra:
            raise ValueError(f"unexpected HM state keys {sorted(extra)}")
        self.prev_loss = float(state.get("prev_loss", INITIAL_PREV_LOSS))

    def destination_hardness(self, z: torch.Tensor, labels: torch.Tensor,
                             generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """``(H_D, l_bar)`` from the clean normalised embeddings ``z``: H_D is a 0-d tensor (LGA-type, const) or
        (N,) (benign, lga_bias; destination triplets share the source anchors ``0, 2, 4, ...``)."""
        cfg = self.config
        gamma = cfg.margin
        lbar = lga_level(self.prev_loss, cfg.lga_u)
        dest = cfg.destination
        if dest in ("benign", "lga_bias"):
            da, dp, dn = MINERS.get(cfg.desth)(z, labels, generator, margin=cfg.margin)
            h = hardness(z[da], z[dp], z[dn])
            return (h if dest == "benign" else h + cfg.xi * (1.0 - lbar)), lbar
        value = {
            "lga": -gamma * lbar,
            "lga_square": -gamma * lbar ** 2,
            "lga_sqrt": -gamma * math.sqrt(lbar),
            "const": cfg.hd_const,
        }[dest]
        return torch.tensor(value, dtype=z.dtype, device=z.device), lbar

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        cfg = self.config
        net = unwrap(model)
        with eval_mode(net), torch.no_grad():
            z_clean = F.normalize(net(images), dim=1)
        anc, pos, neg = MINERS.get(cfg.srch)(z_clean, labels, ctx.generator, margin=cfg.margin)
        h_dest, lbar = self.destination_hardness(z_clean, labels, ctx.generator)
        steps = 0 if cfg.srch == cfg.desth else cfg.steps
        with eval_mode(net):
            xa, xp, xn, res = hardness_manipulation(net, images[anc], images[pos], images[neg], h_dest,
                                                    eps=cfg.eps, alpha=cfg.alpha, steps=steps,
                                                    tol=cfg.early_stop_tol)
        n = len(anc)
        parts = [xa, xp, xn] + ([images[anc], images[pos]] if cfg.ics else [])
        z = F.normalize(model(torch.cat(parts)), dim=1)
        za, zp, zn = z[:n], z[n:2 * n], z[2 * n:3 * n]
        loss_adv = triplet_loss(za, zp, zn, cfg.margin)
        self.prev_loss = float(loss_adv.detach())
        loss = loss_adv
        stats: dict[str, float] = {}
        if cfg.ics:
            lam = ics_lambda_for(ctx.dataset, cfg.ics_lambda)
            l_ics = ics_loss(z[3 * n:4 * n], za, z[4 * n:], cfg.ics_margin)
            loss = loss + lam * l_ics
            stats["ics"] = float(l_ics.detach())
        with torch.no_grad():
            h_src = hardness(z_clean[anc], z_clean[pos], z_clean[neg])
            loss_clean = float(F.relu(h_src + cfg.margin).mean())
            stats.update({
                "loss_clean": loss_clean,
                "adv_gain": self.prev_loss - loss_clean,
                "loss_adv": self.prev_loss,
                "H_src": float(h_src.mean()),
                "H_dst": float(h_dest.float().mean()),
                "H_adv": float(hardness(za, zp, zn).mean()),
                "l_bar": lbar,
                "iterations": float(res.iterations),
            })
        return StepResult(loss=loss, n_forward=2 + res.iterations, n_backward=1 + res.iterations, stats=stats)
