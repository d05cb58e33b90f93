"""CA-TRIDE, Collapse-Aware TRIplet DEcoupling (Tian et al., ICML'24, arXiv 2312.07364; fork of RobRank,
``defenses/pnp.py``).

Threat model: L-infinity ball of radius ``eps`` in [0,1] pixel space, robrank PGD without random start, a
fixed number of iterations (16) with a step ``alpha`` that ramps with the epoch.

TRIDE decouples the perturbation targets: a step perturbs *either* the candidates p, n (CAP) *or* the anchors
(ANP), never both; the default alternates CAP, ANP, CAP, ... over consecutive steps from a fresh state (the
phase flag is per defense instance and saved in ``state_dict``; the reference keeps a process-global flag).
Collapse awareness: the batch's collapseness ``C = d_w(A, P) - d_w(A, N)``, a weighted mean of the
anchor-positive minus that of the anchor-negative distances with attention factor lambda
(:func:`defenses.losses.attention_weights`), enters both objectives (normalised embeddings, recomputed at
every iteration; the clean embeddings come from the step's first no-grad forward):

* CAP (perturb ``[p; n]``): minimise ``relu(-C)``: attack (raise C) until the batch looks collapsed
  (``C >= 0``), then stop.
* ANP (perturb the anchors): minimise ``relu(C) + gamma_c relu(T - s)``: ``relu(C)`` *assists* (pulls a~ back
  toward p when collapsed), ``T`` = mean of the floor(N/2) smallest ``d(a~, n)``, ``s = mean d(a~, a)``;
  ``gamma_c = exp(-relu(-C))`` is a detached float. The research build attacks instead: ``relu(-C)``.

``weighting`` selects the collapseness (recorded in ``meta.json`` with every other field; what lambda moves
under sign-PGD is in :func:`~defenses.losses.attention_weights`):

* ``"slides_detached"`` (default; formerly ``"paper"``, still accepted and recorded in ``weighting_alias``): the
  slides' weights ``exp(-lambda (d - min d))`` (closest pairs first), detached as in the authors' research build,
  so that every image's step follows the objective. Lambda changes the steps only through the value of C.
* ``"slides"``: the slides' formula taken literally, the gradient flowing through the weights; on a trained model
  its CAP adversary can ease triplets, as the release's does.
* ``"released"``: the released file, ``exp(lambda (d - max d))`` with gradient. Its adversary *eases* most
  triplets on a trained model (``adv_gain_cap`` < 0 in ``history.jsonl``); kept for comparison only.
* ``"research_build"``: the compiled module shipped with the release: ``exp(-lambda relu(d - 2 sigma))``
  detached, lambda per batch, ANP's first term ``relu(-C)`` (attack), no step ramp.

Lambda (``lam``): a number; ``"auto"``: per batch from the clean embeddings' entanglement (mean intra-class
over mean inter-class distance) by :func:`lambda_from_entanglement`; ``None`` (default): the paper's value on
CUB 10, CARS 9.5, SOP 2, else ``"auto"`` (the research build always takes ``"auto"`` unless a number is given; the
released variant takes its file's 10). The paper ties lambda to entanglement but gives no formula: the rule is
ours, the straight line through the paper's (entanglement, lambda) pairs (SOP (0.66, 2), CUB/CARS (0.79, 9.75 on
average)) inside that calibrated range and the nearest calibrated value outside it, never an extrapolation.
Trained 28x28 models sit at entanglement 0.27 to 0.46, below the range, and get SOP's 2: the value the paper chose
for the least entangled space it reports (an extrapolated line reached 0, the plain mean, at 0.627, which turned
collapse-awareness off on every attacked step of digits and Fashion-MNIST).

Training loss: ``L_T(a', p', n'; 0.2)``, plus ``0.5 relu(mean_small(d_ap) - mean_small(d_an) + 0.04)`` (L_TR) on
the ANP steps as the slides write it (``tr_steps="anp"``; ``"every_step"`` adds it to the CAP steps too, our
earlier reading of the release's per-call toggle). Triplets come from the ``ghard`` miner (semihard with margin
``0.2 (1 - e/(2E))^2``, positive ``2i+1``). BN frozen.

Schedules (recorded in the config): ``step_ramp`` (the code; default on): ``alpha_eff = alpha * epoch /
max_epochs``, so epoch 0 is clean training (the attack is then skipped) and the eps-ball fills once
``steps * alpha_eff >= eps``. Both presets take ``alpha = 2 eps / steps`` (224: 1/255 as released; 28x28:
9.625/255 where the released config's 3/255 reaches at most 42/255 of the 77/255 ball), so the ball is reachable
from mid-training on, as at 224. ``assist_warmup_fraction`` (the paper; default 0.25): during the first
quarter of the epochs ANP drops its assist term. ``mode``: "alternate" (CA-TRIDE), "anp" (CA-ANP), "cap" (CA-CAP).

Statistics per step (``history.jsonl`` averages them over the steps that report them): ``adv_gain`` = training
loss on the adversarial triplets minus the same loss on the clean ones (same mining), and per phase
``adv_gain_cap`` / ``adv_gain_anp`` (only on attacked steps); ``C`` (clean) and ``C_adv`` collapseness; ``lam``.

Per step: 1 no-grad eval forward (2N), at most ``steps`` forward/backward pairs (2N for CAP, N for ANP;
the clean embeddings are reused, where the reference recomputes 3-4 forwards per iteration), one train-mode
forward/backward of ``[a; p~; n~]`` or ``[a~; p; n]`` (3N, one call). Cost: ``2 + iterations`` forwards,
``1 + iterations`` backwards; at the default 16 steps about half of HM's at 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from attacks.pgd import eval_mode, pgd
from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, preset_threat, unwrap
from defenses.losses import (MARGIN, WEIGHTING_ALIASES, WEIGHTINGS, collapseness, mean_smallest, pairwise_distance,
                             top_ranked_loss)
from defenses.miners import ghard_margin, ghard_miner
from robustbench_dml.metrics import entanglement

LAMBDA_BY_DATASET = {"cub": 10.0, "cars": 9.5, "sop": 2.0}
# The paper's (entanglement, lambda) pairs: SOP (0.66, 2); CUB and CARS (0.79, 10 and 9.5).
_RULE_LOW, _RULE_HIGH = (0.66, 2.0), (0.79, 9.75)
RELEASED_LAMBDA = 10.0  # the value active in the released file's module global (CUB)
MODES = ("alternate", "cap", "anp")
#: on which steps the training loss adds L_TR: "anp" (the slides: CAP trains on L_T(A, P~, N~), ANP on
#: L_T(A~, P, N) + L_TR) or "every_step" (our earlier reading of the release's per-call toggle)
TR_STEPS = ("anp", "every_step")
CAP, ANP = 0, 1


@dataclass(frozen=True)
class CATRIDEConfig(DefenseConfig):
    """``eps``/``alpha``/``steps``: adversary (16 fixed iterations, alpha ramped); ``lam``: attention factor
    (a number, "auto", or None = by dataset); ``weighting``: paper | released | research_build; ``mode``:
    alternate | cap | anp; ``step_ramp``; ``assist_warmup_fraction``; ``margin``: triplet margin;
    ``miner_margin``: epoch-0 ghard margin; ``tr_weight``/``tr_margin``: L_TR; ``tr_steps``: the steps whose loss
    adds L_TR (:data:`TR_STEPS`); ``early_stop_tol``: objective threshold of the early stop; ``weighting_alias``:
    the earlier name a config gave (``"paper"``), recorded, the weighting read as its current name."""

    eps: float = 77 / 255
    alpha: float = 2 * (77 / 255) / 16
    steps: int = 16
    lam: float | str | None = None
    weighting: str = "slides_detached"
    mode: str = "alternate"
    step_ramp: bool = True
    assist_warmup_fraction: float = 0.25
    margin: float = MARGIN
    miner_margin: float = MARGIN
    tr_weight: float = 0.5
    tr_margin: float = 0.04
    tr_steps: str = "anp"
    early_stop_tol: float = 1e-5
    weighting_alias: str = ""

    def __post_init__(self):
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self.eps}, {self.alpha}, {self.steps}")
        if self.mode not in MODES:
            raise ValueError(f"unknown CA-TRIDE mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.weighting in WEIGHTING_ALIASES:
            object.__setattr__(self, "weighting_alias", self.weighting)
            object.__setattr__(self, "weighting", WEIGHTING_ALIASES[self.weighting])
        if self.tr_steps not in TR_STEPS:
            raise ValueError(f"unknown tr_steps {self.tr_steps!r}; known: {', '.join(TR_STEPS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; known: {', '.join(WEIGHTINGS)}")
        if self.lam is not None and self.lam != "auto" and (
                isinstance(self.lam, (bool, str)) or not 0 <= self.lam < math.inf):
            raise ValueError(f"lam must be a number >= 0 or \"auto\", got {self.lam!r}")
        if not 0.0 <= self.assist_warmup_fraction <= 1.0:
            raise ValueError(f"assist_warmup_fraction must be in [0, 1], got {self.assist_warmup_fraction}")

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "CATRIDEConfig":
        t = preset_threat(preset)
        steps = overrides.get("steps", 16)
        defaults = {"eps": t.eps, "alpha": 2 * overrides.get("eps", t.eps) / max(steps, 1), "steps": 16}
        if overrides.get("weighting") == "research_build":
            defaults["step_ramp"] = False
        return cls(**{**defaults, **overrides})


def lambda_from_entanglement(level: float) -> float:
    """The attention factor for an embedding space of entanglement ``level`` (mean intra- over mean inter-class
    distance): the line through the paper's pairs inside its calibrated range [0.66, 0.79], and the nearest
    calibrated value outside it (no extrapolation): 2 (SOP's) for a less entangled space, 9.75 for a more entangled
    one; 0 (the plain mean) for a nan level."""
    (e0, l0), (e1, l1) = _RULE_LOW, _RULE_HIGH
    if not math.isfinite(level):
        return 0.0
    level = min(max(level, e0), e1)
    return l0 + (level - e0) * (l1 - l0) / (e1 - e0)


def lambda_for(dataset: str, value: float | str | None = None, weighting: str = "slides_detached") -> float | str:
    """The attention factor: ``value`` if given, else the paper's per-dataset value, else ``"auto"``. The
    research build's lambda is always per batch unless a number is given; the released file's is its module
    global, CUB's 10, on every dataset without a published value."""
    if value is not None:
        return value
    if weighting == "research_build":
        return "auto"
    return LAMBDA_BY_DATASET.get(str(dataset).lower(), RELEASED_LAMBDA if weighting == "released" else "auto")


def step_size(alpha: float, epoch: int, max_epochs: int, ramp: bool = True) -> float:
    """``alpha * epoch / max_epochs`` (0-based epoch) with the ramp, else ``alpha``."""
    return alpha * epoch / max(max_epochs, 1) if ramp else alpha


def cap_attack(net, x_cand: torch.Tensor, z_anchor: torch.Tensor, *, lam: float, eps: float, alpha: float,
               steps: int, tol: float = 1e-5, weighting: str = "slides_detached"):
    """Candidate perturbation: PGD on ``[x_p; x_n]`` (2N images) minimising ``relu(-C)`` with the clean
    normalised anchors ``z_anchor`` (N, D). Returns the engine's result (rows ``[p~; n~]``)."""
    n = len(z_anchor)

    def objective(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(net(x), dim=1)
        c = collapseness(pairwise_distance(z_anchor, e[:n]), pairwise_distance(z_anchor, e[n:]), lam, weighting)
        return F.relu(-c)

    return pgd(objective, x_cand, eps=eps, alpha=alpha, steps=steps, stop=lambda t, v, p: v < tol)


def anp_objective(e_anchor: torch.Tensor, z_anchor: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, *,
                  lam: float, assist: bool = True, weighting: str = "slides_detached") -> torch.Tensor:
    """ANP's objective for adversarial anchor embeddings ``e_anchor`` (normalised, with graph) against the clean
    ``z_anchor``, ``z_pos``, ``z_neg``: ``[relu(C)] + gamma_c relu(T - s)``, gamma_c detached; the research
    build's first term is ``relu(-C)``."""
    d_ap = pairwise_distance(e_anchor, z_pos)
    d_an = pairwise_distance(e_anchor, z_neg)
    c = collapseness(d_ap, d_an, lam, weighting)
    gamma_c = math.exp(-max(-float(c.detach()), 0.0))
    attack = gamma_c * F.relu(mean_smallest(d_an) - pairwise_distance(e_anchor, z_anchor).mean())
    if not assist:
        return attack
    return (F.relu(-c) if weighting == "research_build" else F.relu(c)) + attack


def anp_attack(net, x_anchor: torch.Tensor, z_anchor: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, *,
               lam: float, eps: float, alpha: float, steps: int, assist: bool = True, tol: float = 1e-5,
               weighting: str = "slides_detached"):
    """Anchor perturbation: PGD on the N anchor images minimising :func:`anp_objective`."""

    def objective(x: torch.Tensor) -> torch.Tensor:
        return anp_objective(F.normalize(net(x), dim=1), z_anchor, z_pos, z_neg, lam=lam, assist=assist,
                             weighting=weighting)

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

    def loss(self, za: torch.Tensor, zp: torch.Tensor, zn: torch.Tensor, phase: int = ANP) -> torch.Tensor:
        """The training loss on normalised triplet embeddings (N, D) each: ``L_T``, plus ``tr_weight L_TR`` on the
        steps of ``tr_steps`` (ANP's, or every step)."""
        d_ap, d_an = pairwise_distance(za, zp), pairwise_distance(za, zn)
        loss = F.relu(d_ap - d_an + self.config.margin).mean()
        if self.config.tr_steps == "every_step" or phase == ANP:
            loss = loss + self.config.tr_weight * top_ranked_loss(d_ap, d_an, self.config.tr_margin)
        return loss

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        cfg = self.config
        net = unwrap(model)
        phase = {"alternate": self.phase, "cap": CAP, "anp": ANP}[cfg.mode]
        with eval_mode(net), torch.no_grad():
            z_clean = F.normalize(net(images), dim=1)
        lam = lambda_for(ctx.dataset, cfg.lam, cfg.weighting)
        if lam == "auto":
            lam = lambda_from_entanglement(entanglement(z_clean, labels))
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
                                 tol=cfg.early_stop_tol, weighting=cfg.weighting)
                xp, xn = res.x_adv[:n], res.x_adv[n:]
            else:
                res = anp_attack(net, xa, za0, zp0, zn0, lam=lam, eps=eps, alpha=alpha, steps=steps,
                                 assist=assist, tol=cfg.early_stop_tol, weighting=cfg.weighting)
                xa = res.x_adv
        z = F.normalize(model(torch.cat([xa, xp, xn])), dim=1)
        za, zp, zn = z[:n], z[n:2 * n], z[2 * n:]
        loss = self.loss(za, zp, zn, phase)
        if cfg.mode == "alternate":
            self.phase = 1 - phase
        with torch.no_grad():
            loss_clean = float(self.loss(za0, zp0, zn0, phase))
            stats = {
                "phase": float(phase),
                "lam": float(lam),
                "C": float(collapseness(pairwise_distance(za0, zp0), pairwise_distance(za0, zn0), lam,
                                        cfg.weighting)),
                "C_adv": float(collapseness(pairwise_distance(za, zp), pairwise_distance(za, zn), lam,
                                            cfg.weighting)),
                "loss_clean": loss_clean,
                "alpha_eff": alpha,
                "miner_margin": ghard_margin(ctx.epoch, ctx.max_epochs, cfg.miner_margin),
                "assist": float(assist),
                "iterations": float(res.iterations),
            }
            if steps > 0:
                gain = float(loss.detach()) - loss_clean
                stats["adv_gain"] = gain
                stats["adv_gain_cap" if phase == CAP else "adv_gain_anp"] = gain
        return StepResult(loss=loss, n_forward=2 + res.iterations, n_backward=1 + res.iterations, stats=stats)
