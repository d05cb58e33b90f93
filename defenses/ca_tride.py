"""CA-TRIDE, Collapse-Aware TRIplet DEcoupling (Tian et al., ICML'24, arXiv 2312.07364; fork of RobRank,
``defenses/pnp.py``; ``defenses.md`` §5).

Threat model: L-infinity ball of radius ``eps`` in [0,1] pixel space, robrank PGD without random start, a
fixed number of iterations (16) with a step ``alpha`` that ramps with the epoch.

TRIDE decouples the perturbation targets: a step perturbs *either* the candidates p, n (CAP) *or* the anchors
(ANP), never both; the default alternates CAP, ANP, CAP, ... over consecutive steps from a fresh state (the
phase flag is per defense instance and saved in ``state_dict``; the reference keeps a process-global flag).
Collapse awareness: the batch's collapseness ``C = W(d_ap) - W(d_an)`` with the softmax-weighted mean
``W(d; lambda)`` (attention factor lambda) enters both objectives (normalised embeddings, recomputed at every
iteration; the clean embeddings come from the step's first no-grad forward):

* CAP (perturb ``[p; n]``): minimise ``relu(-C)``: attack until the batch looks collapsed (``C >= 0``), then stop.
* ANP (perturb the anchors): minimise ``relu(C) + gamma_c relu(T - s)``: ``relu(C)`` *assists* (pulls a~ back
  toward p when collapsed), ``T`` = mean of the floor(N/2) smallest ``d(a~, n)``, ``s = mean d(a~, a)``;
  ``gamma_c = exp(-relu(-C))`` is a detached float.

Both stop early once the objective is below 1e-5 (checked before the step). Training loss:
``L_T(a', p', n'; 0.2) + 0.5 relu(mean_small(d_ap) - mean_small(d_an) + 0.04)`` (L_TR always on; the
reference's toggle ends up adding it to every training loss). Triplets come from the ``ghard`` miner
(semihard with margin ``0.2 (1 - e/(2E))^2``, positive ``2i+1``). BN frozen.

Schedules (both configurable, both recorded in the config): ``step_ramp`` (the code; default on):
``alpha_eff = alpha * epoch / max_epochs``, so epoch 0 is clean training (we then skip the attack entirely,
which only saves its cost) and the eps-ball fills only once ``steps * alpha_eff >= eps`` (with ``steps == 1``
the engine's FGSM step is ``min(eps, alpha_eff)``, so the ramp holds there too);
``assist_warmup_fraction`` (the paper; default 0.25): during the first quarter of the epochs the ANP objective
drops its assist term ``relu(C)`` (attack only). ``mode``: "alternate" (CA-TRIDE), "anp" (CA-ANP), "cap" (CA-CAP).

Lambda: ``lam`` (None = by dataset: CUB 10, CARS 9.5, SOP 2, the paper's table; any other dataset (MNIST,
Fashion, digits, custom) uses ``DEFAULT_LAMBDA`` = 10, the value active in the released file).

Per step: 1 no-grad eval forward (2N), at most ``steps`` forward/backward pairs (2N for CAP, N for ANP;
the clean embeddings are reused, where the reference recomputes 3-4 forwards per iteration), one train-mode
forward/backward of ``[a; p~; n~]`` or ``[a~; p; n]`` (3N, one call; the reference uses 2-3 calls, the same
computation with BN frozen). Cost: ``2 + iterations`` forwards, ``1 + iterations`` backwards; at the default
16 steps about half of HM's at 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from attacks.pgd import eval_mode, pgd
from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, preset_threat, unwrap
from defenses.losses import MARGIN, collapseness, mean_smallest, pairwise_distance, top_ranked_loss, triplet_loss
from defenses.miners import ghard_margin, ghard_miner

LAMBDA_BY_DATASET = {"cub": 10.0, "cars": 9.5, "sop": 2.0}
DEFAULT_LAMBDA = 10.0
MODES = ("alternate", "cap", "anp")
CAP, ANP = 0, 1


@dataclass(frozen=True)
class CATRIDEConfig(DefenseConfig):
    """``eps``/``alpha``/``steps``: adversary (16 fixed iterations, alpha ramped); ``lam``: attention factor
    (None = by dataset); ``mode``: alternate | cap | anp; ``step_ramp``; ``assist_warmup_fraction``;
    ``margin``: triplet margin; ``miner_margin``: epoch-0 ghard margin; ``tr_weight``/``tr_margin``: L_TR;
    ``early_stop_tol``: objective threshold of the early stop."""

    eps: float = 77 / 255
    alpha: float = 3 / 255
    steps: int = 16
    lam: float | None = None
    mode: str = "alternate"
    step_ramp: bool = True
    assist_warmup_fraction: float = 0.25
    margin: float = MARGIN
    miner_margin: float = MARGIN
    tr_weight: float = 0.5
    tr_margin: float = 0.04
    early_stop_tol: float = 1e-5

    def __post_init__(self):
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self.eps}, {self.alpha}, {self.steps}")
        if self.mode not in MODES:
            raise ValueError(f"unknown CA-TRIDE mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.lam is not None and self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if not 0.0 <= self.assist_warmup_fraction <= 1.0:
            raise ValueError(f"assist_warmup_fraction must be in [0, 1], got {self.assist_warmup_fraction}")

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "CATRIDEConfig":
        t = preset_threat(preset)
        return cls(**{"eps": t.eps, "alpha": t.alpha, "steps": 16, **overrides})


def lambda_for(dataset: str, value: float | None = None) -> float:
    """The attention factor: ``value`` if given, else the paper's per-dataset value, else ``DEFAULT_LAMBDA``."""
    if value is not None:
        return value
    return LAMBDA_BY_DATASET.get(str(dataset).lower(), DEFAULT_LAMBDA)


def step_size(alpha: float, epoch: int, max_epochs: int, ramp: bool = True) -> float:
    """``alpha * epoch / max_epochs`` (0-based epoch) with the ramp, else ``alpha``."""
    return alpha * epoch / max(max_epochs, 1) if ramp else alpha


def cap_attack(net, x_cand: torch.Tensor, z_anchor: torch.Tensor, *, lam: float, eps: float, alpha: float,
               steps: int, tol: float = 1e-5):
    """Candidate perturbation: PGD on ``[x_p; x_n]`` (2N images) minimising ``relu(-C)`` with the clean
    normalised anchors ``z_anchor`` (N, D). Returns the engine's result (rows ``[p~; n~]``)."""
    n = len(z_anchor)

    def objective(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(net(x), dim=1)
        c = collapseness(pairwise_distance(z_anchor, e[:n]), pairwise_distance(z_anchor, e[n:]), lam)
        return F.relu(-c)

    return pgd(objective, x_cand, eps=eps, alpha=alpha, steps=steps, stop=lambda t, v, p: v < tol)


def anp_objective(e_anchor: torch.Tensor, z_anchor: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, *,
                  lam: float, assist: bool = True) -> torch.Tensor:
    """ANP's objective for adversarial anchor embeddings ``e_anchor`` (normalised, with graph) against the clean
    ``z_anchor``, ``z_pos``, ``z_neg``: ``[relu(C)] + gamma_c relu(T - s)``, gamma_c detached."""
    d_ap = pairwise_distance(e_anchor, z_pos)
    d_an = pairwise_distance(e_anchor, z_neg)
    c = collapseness(d_ap, d_an, lam)
    gamma_c = math.exp(-max(-float(c.detach()), 0.0))
    attack = gamma_c * F.relu(mean_smallest(d_an) - pairwise_distance(e_anchor, z_anchor).mean())
    return F.relu(c) + attack if assist else attack


def anp_attack(net, x_anchor: torch.Tensor, z_anchor: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, *,
               lam: float, eps: float, alpha: float, steps: int, assist: bool = True, tol: float = 1e-5):
    """Anchor perturbation: PGD on the N anchor images minimising :func:`anp_objective`."""

    def objective(x: torch.Tensor) -> torch.Tensor:
        return anp_objective(F.normalize(net(x), dim=1), z_anchor, z_pos, z_neg, lam=lam, assist=assist)

    return pgd(objective, x_anchor, eps=eps, alpha=alpha, steps=steps, stop=lambda t, v, p: v < tol)


@DEFENSES.register("ca_tride")
class CATRIDE(Defense):
    id = "ca_tride"
    Config = CATRIDEConfig

    def __init__(self, config: CATRIDEConfig | None = None, *, preset: str = "28", **overrides: Any):
        super().__init__(config, preset=preset, **overrides)
        self.phase = CAP if self.config.mode != "anp" else ANP

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - {"phase"}
        if extra:
            raise ValueError(f"unexpected CA-TRIDE state keys {sorted(extra)}")
        self.phase = int(state.get("phase", CAP))

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        cfg = self.config
        net = unwrap(model)
        lam = lambda_for(ctx.dataset, cfg.lam)
        phase = {"alternate": self.phase, "cap": CAP, "anp": ANP}[cfg.mode]
        with eval_mode(net), torch.no_grad():
            z_clean = F.normalize(net(images), dim=1)
        anc, pos, neg = ghard_miner(z_clean, labels, ctx.generator, margin=cfg.miner_margin,
                                    epoch=ctx.epoch, max_epochs=ctx.max_epochs)
        za0, zp0, zn0 = z_clean[anc], z_clean[pos], z_clean[neg]
        alpha = step_size(cfg.alpha, ctx.epoch, ctx.max_epochs, cfg.step_ramp)
        steps = cfg.steps if alpha > 0 else 0
        eps = min(cfg.eps, alpha) if steps == 1 else cfg.eps
        assist = ctx.epoch >= cfg.assist_warmup_fraction * ctx.max_epochs
        xa, xp, xn = images[anc], images[pos], images[neg]
        n = len(anc)
        with eval_mode(net):
            if phase == CAP:
                res = cap_attack(net, torch.cat([xp, xn]), za0, lam=lam, eps=eps, alpha=alpha, steps=steps,
                                 tol=cfg.early_stop_tol)
                xp, xn = res.x_adv[:n], res.x_adv[n:]
            else:
                res = anp_attack(net, xa, za0, zp0, zn0, lam=lam, eps=eps, alpha=alpha, steps=steps,
                                 assist=assist, tol=cfg.early_stop_tol)
                xa = res.x_adv
        z = F.normalize(model(torch.cat([xa, xp, xn])), dim=1)
        za, zp, zn = z[:n], z[n:2 * n], z[2 * n:]
        d_ap, d_an = pairwise_distance(za, zp), pairwise_distance(za, zn)
        l_t = F.relu(d_ap - d_an + cfg.margin).mean()
        l_tr = top_ranked_loss(d_ap, d_an, cfg.tr_margin)
        loss = l_t + cfg.tr_weight * l_tr
        if cfg.mode == "alternate":
            self.phase = 1 - phase
        with torch.no_grad():
            stats = {
                "phase": float(phase),
                "C": float(collapseness(pairwise_distance(za0, zp0), pairwise_distance(za0, zn0), lam)),
                "C_adv": float(collapseness(d_ap.detach(), d_an.detach(), lam)),
                "loss_clean": float(triplet_loss(za0, zp0, zn0, cfg.margin)),
                "L_T": float(l_t.detach()),
                "L_TR": float(l_tr.detach()),
                "alpha_eff": alpha,
                "miner_margin": ghard_margin(ctx.epoch, ctx.max_epochs, cfg.miner_margin),
                "assist": float(assist),
                "iterations": float(res.iterations),
            }
        return StepResult(loss=loss, n_forward=2 + res.iterations, n_backward=1 + res.iterations, stats=stats)
