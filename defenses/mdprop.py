"""MDProp, multi-targeted adversarial propagation with disentangled BN (Mondal et al., ACML'23,
arXiv 2211.16253; ``intherejeet/MDProp``).

Every BatchNorm becomes a routed triple BN (main + ``aux_bn1`` + ``aux_bn2``, :mod:`defenses.routed_bn`). Per
step, in eval mode: route ``adv1``, a *single-targeted* feature attack (STAX, T = ``attacker1_targets`` = 1)
on the first half of the batch; route ``adv2``, a *multi-targeted* one (MTAX, T = ``attacker2_targets`` = 5)
on the second half. Targets: T random row permutations (from ``ctx.generator``) of the detached clean
normalised embeddings ``E`` computed with the attacker's route in eval mode; objective (minimised)
``J = ((1/T) sum_k mean_i ||t^(k)_i - e(x~_i)||)^2``. Then, in train mode with live BN, one forward of
``[x; STAX; MTAX]`` (2B rows) through the ``mix`` route (rows ``[0, B)`` main BN, ``[B, 1.5B)`` aux 1,
``[1.5B, 2B)`` aux 2) and a single Multi-Similarity loss over the 2B embeddings with labels
``[y; y[:B/2]; y[B/2:]]`` (implicit clean : STAX : MTAX ratio 2 : 1 : 1; no per-distribution weights).
Evaluation uses the main BN only (route ``clean``); :meth:`MDProp.export_model` strips the aux BNs.

Threat model: L-infinity radius ``eps`` in the model's *normalised* input space (``(x - mean)/std`` of the
backbone's ``Normalize`` layer; pixel units for a backbone without one, e.g. c2f2bn), one step of size ``eps``
(``alpha`` = eps/steps), uniform random start of half-width ``random_start``, iterates clipped to the min/max
of the attacked sub-batch (in normalised space), not to [0, 1].

Presets: "224" = the paper (eps 0.01, 1 step, random start 5e-4, normalised space). "28" (our choice; the
paper ran only 224x224): the same budget expressed in pixels through the MNIST std 0.3081, since 28x28
backbones have no input normalisation: eps = 0.01 * 0.3081, random start 5e-4 * 0.3081, 1 step.

Layout: the reference samples ``bs/2`` random classes x 2 ("class_random"); the harness gives SPC-2 batches
``[c1, c1, c2, c2, ...]``, also pairs of same-class images, which we use as the class-random-like layout.
Cost: 2 no-grad eval forwards (targets, B/2 each) + ``steps`` forward/backward pairs per attacker + one
train-mode forward/backward on 2B.

Quirk: the reference copies only the *affine* parameters into the aux BNs (running mean 0, var 1), so the
first eval-mode attacks of a pretrained network see unmatched statistics; ``aux_bn_copy_stats=True`` (default)
copies the running statistics too, ``False`` is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attacks.pgd import eval_mode, pgd
from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, unwrap
from defenses.losses import multi_similarity_loss, pairwise_distance
from defenses.routed_bn import add_routes, bn_route, strip_routes
from robustbench_dml.backbones.base import Normalize

MNIST_STD = 0.3081


@dataclass(frozen=True)
class MDPropConfig(DefenseConfig):
    """``eps``/``alpha``/``steps``/``random_start``: feature-attack budget (normalised space; ``alpha`` None
    = eps/steps); ``attacker1_targets``/``attacker2_targets``: T of STAX and MTAX; ``n_aux``: 2 (MDProp) or 1
    (AdvProp-D: clean + STAX on the whole batch); ``aux_bn_copy_stats``; ``ms_*``: Multi-Similarity loss."""

    eps: float = 0.01 * MNIST_STD
    alpha: float | None = None
    steps: int = 1
    random_start: float = 5e-4 * MNIST_STD
    attacker1_targets: int = 1
    attacker2_targets: int = 5
    n_aux: int = 2
    aux_bn_copy_stats: bool = True
    ms_pos_weight: float = 2.0
    ms_neg_weight: float = 40.0
    ms_margin: float = 0.1
    ms_threshold: float = 0.5

    def __post_init__(self):
        if self.eps < 0 or self.steps < 0 or self.random_start < 0 or (self.alpha is not None and self.alpha < 0):
            raise ValueError("eps, alpha, steps and random_start must be >= 0")
        if self.n_aux not in (1, 2):
            raise ValueError(f"n_aux must be 1 (AdvProp-D) or 2 (MDProp), got {self.n_aux}")
        if self.attacker1_targets < 1 or self.attacker2_targets < 1:
            raise ValueError("attacker targets must be >= 1")

    @property
    def step(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / max(self.steps, 1)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "MDPropConfig":
        if str(preset) == "224":
            return cls(**{"eps": 0.01, "random_start": 5e-4, "steps": 1, **overrides})
        if str(preset) == "28":
            return cls(**overrides)
        raise ValueError(f"unknown preset {preset!r}; known: 28, 224")


def input_scale(net) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(mean, std) of the backbone's input normalisation (per channel, (1, C, 1, 1)), or (0, 1) without one."""
    norm = getattr(net, "normalize", None)
    if isinstance(norm, Normalize):
        return norm.mean, norm.std
    return 0.0, 1.0


def make_targets(z: torch.Tensor, n_targets: int, generator: torch.Generator) -> torch.Tensor:
    """(T, B, D): T random row permutations of the detached embeddings ``z`` (B, D)."""
    perms = [torch.randperm(len(z), generator=generator, device="cpu").to(z.device) for _ in range(n_targets)]
    return torch.stack([z.detach()[p] for p in perms])


def feature_attack(net, x: torch.Tensor, route: str, n_targets: int, *, eps: float, alpha: float, steps: int,
                   random_start: float, generator: torch.Generator):
    """MDProp's targeted feature attack (``PGDAttacker.attack_feature``) on ``x`` (B, C, H, W) through BN
    ``route``; the caller sets eval mode. Returns ``(x_adv, targets (T, B, D), PGDResult)``."""
    mean, std = input_scale(net)
    with bn_route(net, route):
        with torch.no_grad():
            z0 = F.normalize(net(x), dim=1)
        targets = make_targets(z0, n_targets, generator)
        u = (x - mean) / std
        lo, hi = u.min() * std + mean, u.max() * std + mean
        lo = lo if isinstance(lo, torch.Tensor) else torch.tensor(lo, dtype=x.dtype, device=x.device)
        hi = hi if isinstance(hi, torch.Tensor) else torch.tensor(hi, dtype=x.dtype, device=x.device)

        def objective(xa: torch.Tensor) -> torch.Tensor:
            e = F.normalize(net(xa), dim=1)
            d = torch.stack([pairwise_distance(t, e).mean() for t in targets]).mean()
            return d.pow(2)

        res = pgd(objective, x, eps=eps * std, alpha=alpha * std, steps=steps, random_start=random_start * std,
                  generator=generator, bounds=(lo, hi))
    return res.x_adv, targets, res


@DEFENSES.register("mdprop")
class MDProp(Defense):
    id = "mdprop"
    Config = MDPropConfig
    batch_layout = "spc2"  # the reference's class-random layout is served by SPC-2 pairs (module docstring)
    preferred_backbones = {"28": "c2f2bn"}  # routed BN needs BatchNorm layers; the 224 default ResNet has them

    def prepare_model(self, model):
        add_routes(unwrap(model), self.config.n_aux, copy_stats=self.config.aux_bn_copy_stats)
        return model

    def train_mode(self, model) -> None:
        model.train()

    def export_model(self, model):
        return strip_routes(unwrap(model))

    def assemble(self, net, images: torch.Tensor, generator: torch.Generator):
        """Craft the adversarial halves in eval mode: ``(adv_images, adv_labels_index, iterations)`` with the
        rows ``[STAX; MTAX]`` (B rows) and the index into the batch each row comes from."""
        cfg = self.config
        b = len(images)
        h = b // 2 if cfg.n_aux == 2 else b
        kw = dict(eps=cfg.eps, alpha=cfg.step, steps=cfg.steps, random_start=cfg.random_start, generator=generator)
        with eval_mode(net):
            x1, _, r1 = feature_attack(net, images[:h], "adv1", cfg.attacker1_targets, **kw)
            parts, its = [x1], r1.iterations
            if cfg.n_aux == 2:
                x2, _, r2 = feature_attack(net, images[h:], "adv2", cfg.attacker2_targets, **kw)
                parts.append(x2)
                its += r2.iterations
        sizes = (b, h, b - h) if cfg.n_aux == 2 else (b, b)
        return torch.cat(parts), sizes, its

    def training_step(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> StepResult:
        cfg = self.config
        net = unwrap(model)
        x_adv, sizes, its = self.assemble(net, images, ctx.generator)
        with bn_route(net, "mix", sizes):
            z = model(torch.cat([images, x_adv]))
        y = torch.cat([labels, labels])  # [y; y[:B/2]; y[B/2:]] == [y; y]
        loss = multi_similarity_loss(z, y, pos_weight=cfg.ms_pos_weight, neg_weight=cfg.ms_neg_weight,
                                     margin=cfg.ms_margin, threshold=cfg.ms_threshold)
        b = len(images)
        with torch.no_grad():
            zn = F.normalize(z.detach(), dim=1)
            ms = dict(pos_weight=cfg.ms_pos_weight, neg_weight=cfg.ms_neg_weight, margin=cfg.ms_margin,
                      threshold=cfg.ms_threshold)
            stats = {"shift": float((zn[b:] - zn[:b]).norm(dim=1).mean()), "iterations": float(its),
                     # the MS loss of the adversarial half minus that of the clean half (each mined on itself)
                     "adv_gain": float(multi_similarity_loss(zn[b:], labels, **ms))
                     - float(multi_similarity_loss(zn[:b], labels, **ms))}
        n_attack_fwd = len(sizes) - 1
        return StepResult(loss=loss, n_forward=n_attack_fwd + its + 1, n_backward=its + 1, stats=stats)
