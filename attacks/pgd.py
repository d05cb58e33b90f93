"""The one projected-gradient engine (L-infinity), shared by the evaluation attacks and the training-time
adversaries of the defenses.

Threat model: the L-infinity ball of radius ``eps`` around the clean images, intersected with ``bounds``
(the [0,1] pixel box by default). Objectives are *minimised*. Only the input gradient is computed
(``torch.autograd.grad``), so parameter ``.grad`` is never touched. Two step-size schedules share the box
(:func:`box`) and the projection:

- :func:`pgd`, RobRank's: a constant step ``alpha * sign(grad)`` (``steps == 1``: one step of ``eps``, FGSM), the
  last iterate returned. No random start unless asked.
- :func:`apgd`, the schedule of APGD (Croce and Hein, "Reliable evaluation of adversarial robustness with an
  ensemble of diverse parameter-free attacks", ICML 2020): a per-image step that starts at ``2 eps``, a momentum
  of 0.25 on the previous move, and at checkpoints a halving of the step with a restart from the image's best
  point when progress stalled; the best iterate by the objective is returned.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Bound = float | torch.Tensor


@dataclass
class PGDResult:
    """``x_adv`` (detached, same shape as x0); ``iterations``: gradient evaluations run; ``last_loss``: the
    objective at the last evaluated iterate (before its step), or None when no step ran."""

    x_adv: torch.Tensor
    iterations: int
    last_loss: float | None


def pgd(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    eps: Bound,
    alpha: Bound,
    steps: int,
    random_start: Bound = 0.0,
    generator: torch.Generator | None = None,
    bounds: tuple[Bound, Bound] = (0.0, 1.0),
    stop: Callable[[int, float, float | None], bool] | None = None,
) -> PGDResult:
    """Minimise ``objective(x)`` (a scalar) over the eps-ball around ``x0``.

    Args:
        objective: maps the current iterate (B, ...) to a scalar loss; it runs the model itself.
        x0: clean inputs; never modified.
        eps, alpha: radius and step, floats or tensors broadcastable to ``x0`` (e.g. per channel).
        steps: iterations; 0 returns ``x0``; 1 is FGSM with step ``eps``.
        random_start: half-width of a uniform start inside the ball (0 = start at ``x0``).
        generator: the source of the random start.
        bounds: box the iterate is clamped to after each projection (floats or tensors).
        stop: ``stop(t, loss_t, loss_prev) -> bool`` checked before step t; True ends the loop.
    """
    x0 = x0.detach()
    lo, hi = box(x0, eps, bounds)
    x = x0.clone()
    if _positive(random_start):
        x = uniform_start(x0, random_start, lo, hi, generator)
    step = eps if steps == 1 else alpha
    prev: float | None = None
    iterations = 0
    for t in range(steps):
        x.requires_grad_(True)
        loss = objective(x)
        (grad,) = torch.autograd.grad(loss, x)
        value = float(loss.detach())
        iterations += 1
        if stop is not None and stop(t, value, prev):
            x = x.detach()
            prev = value
            break
        prev = value
        with torch.no_grad():
            x = x.detach() - step * grad.sign()
            x = torch.minimum(torch.maximum(x, lo), hi)
    return PGDResult(x.detach(), iterations, prev)


def box(x0: torch.Tensor, eps: Bound, bounds: tuple[Bound, Bound] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (lo, hi) of the eps-ball around ``x0`` intersected with ``bounds``."""
    lo = torch.clamp(x0 - eps, min=bounds[0]) if not isinstance(bounds[0], torch.Tensor) else torch.maximum(x0 - eps, bounds[0])
    hi = torch.clamp(x0 + eps, max=bounds[1]) if not isinstance(bounds[1], torch.Tensor) else torch.minimum(x0 + eps, bounds[1])
    return lo, hi


def uniform_start(x0: torch.Tensor, width: Bound, lo: torch.Tensor, hi: torch.Tensor,
                  generator: torch.Generator | None) -> torch.Tensor:
    """A uniform point of the box ``x0 +- width`` clipped to (lo, hi), drawn on the CPU from ``generator``."""
    noise = torch.rand(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
    return torch.minimum(torch.maximum(x0 + (2 * noise - 1) * width, lo), hi)


#: the APGD variants :func:`apgd` runs: ``"paper"``, Croce and Hein's algorithm; ``"v1"``, as the strong suites of
#: version 1 ran it (two departures, kept so that their results reproduce; :func:`apgd_checkpoints`, :func:`apgd`)
APGD_VARIANTS = ("paper", "v1")


def apgd_checkpoints(steps: int, variant: str = "paper") -> list[int]:
    """The iterations (below ``steps``) at which APGD may halve its step.

    ``"paper"``: ``w_j = ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, computed in whole hundredths (exact): at N = 24
    ``[6, 10, 14, 17, 20, 21, 23]``, at N = 100 ``[22, 41, 57, 70, 80, 87, 93, 99]``.
    ``"v1"``: the reference code's integer version, ``int(0.22 N)`` then intervals shrinking by ``int(0.03 N)`` down to
    ``int(0.06 N)``, each at least 1: the paper's at N = 100, but at N = 24 the shrink and the floor are both 1 and the
    checkpoints collapse to ``[5, 9, 12, 14, 15, 16, ..., 23]`` (any failed move of the last ten halves the step).
    """
    if variant == "paper":
        hundredths, out = [0, 22], []
        while hundredths[-1] <= 100:
            w = -(-hundredths[-1] * steps // 100)  # ceil(p N), in integers
            if w < steps and (not out or w > out[-1]):
                out.append(w)
            hundredths.append(hundredths[-1] + max(hundredths[-1] - hundredths[-2] - 3, 6))
        return out
    if variant != "v1":
        raise ValueError(f"APGD variant must be one of {APGD_VARIANTS}, not {variant!r}")
    first, shrink, floor = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, t, interval = [], first, first
    while t < steps:
        out.append(t)
        interval = max(interval - shrink, floor)
        t += interval
    return out


@dataclass
class APGDResult:
    """``x_best`` (B, ...): per image the evaluated iterate with the lowest objective; ``loss_best`` (B,) its value;
    ``iterations``: gradient evaluations run (``steps``); ``halvings`` (B,): how often each image's step halved."""

    x_best: torch.Tensor
    loss_best: torch.Tensor
    iterations: int
    halvings: torch.Tensor


def apgd(
    objective: Callable[[torch.Tensor, int], torch.Tensor],
    x0: torch.Tensor,
    *,
    eps: float,
    steps: int,
    start: torch.Tensor | None = None,
    bounds: tuple[Bound, Bound] = (0.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.25,
    variant: str = "paper",
) -> APGDResult:
    """Minimise the per-image ``objective(x, t) -> (B,)`` over the eps-ball around ``x0`` with APGD's schedule.

    ``steps`` gradient evaluations: at ``start`` (default ``x0``) and after each of ``steps - 1`` moves, so the last
    move is evaluated too. A move is ``z = P(x - eta sign(grad))``, then
    ``x' = P(x + (1 - momentum) (z - x) + momentum (x - x_prev))`` (the paper's 0.75 / 0.25; the first move has no
    momentum; after a restart the momentum is the jump back to the best point, as in the paper's algorithm).
    At each :func:`apgd_checkpoints` iteration an image's step ``eta`` (initially ``2 eps``) is halved and the image
    moved back to its best point (with that point's gradient) when fewer than ``rho`` of the moves since the
    previous checkpoint lowered its objective (condition 1), or when its step was not halved at the previous
    checkpoint and its best value has not improved since (condition 2). ``variant="v1"`` (the strong suites of
    version 1) takes the checkpoints of the reference code's integer rule and a condition 2 that does not look at
    the previous checkpoint's halving, so the step can halve at two checkpoints in a row on condition 2.
    ``objective`` receives the iteration index ``t`` and may record anything about the iterate (the attacks measure
    their goal there, see :mod:`attacks.base`). The images are independent: the schedule is per image.
    """
    x0 = x0.detach()
    lo, hi = box(x0, eps, bounds)
    b = x0.shape[0]
    view = (b,) + (1,) * (x0.dim() - 1)
    x = (x0 if start is None else start.detach()).clone()
    eta = torch.full((b,), 2.0 * float(eps), dtype=x0.dtype, device=x0.device)
    checkpoints = set(apgd_checkpoints(steps, variant))
    halvings = torch.zeros(b, dtype=torch.int64, device=x0.device)
    x_best = x.clone()
    loss_best = torch.full((b,), float("inf"), dtype=torch.float64, device=x0.device)
    grad_best = torch.zeros_like(x0)
    x_prev = x.clone()
    loss_prev = None
    improved_moves = torch.zeros(b, dtype=torch.int64, device=x0.device)
    last_check, best_at_check = 0, loss_best.clone()
    halved_at_check = torch.zeros(b, dtype=torch.bool, device=x0.device)
    grad = torch.zeros_like(x0)
    for t in range(steps):
        if t > 0:  # move from x (its gradient ``grad``) to the next iterate
            with torch.no_grad():
                z = torch.minimum(torch.maximum(x - eta.view(view) * grad.sign(), lo), hi)
                nxt = z if t == 1 else torch.minimum(torch.maximum(
                    x + (1 - momentum) * (z - x) + momentum * (x - x_prev), lo), hi)
                x_prev, x = x, nxt
        x.requires_grad_(True)
        losses = objective(x, t)
        grad = torch.autograd.grad(losses.sum(), x)[0].contiguous()  # an own tensor (not a broadcast view)
        x = x.detach()
        with torch.no_grad():
            value = losses.detach().double()
            if loss_prev is not None:
                improved_moves += (value < loss_prev).long()
            loss_prev = value
            better = value < loss_best
            loss_best = torch.where(better, value, loss_best)
            x_best[better] = x[better]
            grad_best[better] = grad[better]
            if t in checkpoints:
                stalled = improved_moves.double() < rho * (t - last_check)
                unchanged = loss_best >= best_at_check
                if variant == "paper":
                    unchanged &= ~halved_at_check
                halve = stalled | unchanged
                eta = torch.where(halve, eta / 2, eta)
                halvings += halve.long()
                x[halve] = x_best[halve]
                grad[halve] = grad_best[halve]
                improved_moves.zero_()
                last_check, best_at_check, halved_at_check = t, loss_best.clone(), halve
    return APGDResult(x_best.detach(), loss_best, steps, halvings)


def _positive(v: Bound) -> bool:
    return bool((v > 0).any()) if isinstance(v, torch.Tensor) else v > 0


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (every submodule) in eval mode and restore each submodule's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def iteration_seconds(model: nn.Module, images: torch.Tensor, *, repeats: int = 3,
                      clock: Callable[[], float] = time.perf_counter, slow: float | None = None) -> list[float]:
    """Seconds of the unit of every PGD run's cost, one gradient evaluation: ``images`` through ``model`` in eval
    mode to L2-normalised embeddings (as the attacks embed) and back to the input only (no parameter gradients).
    One warm-up call (allocations, kernel selection: a first call on a CPU measured up to ~1.6x slower), then
    ``repeats`` timed calls, CUDA synchronised. A warm-up slower than ``slow`` seconds is returned as the only
    measurement, so pricing a 224x224 job on a CPU stays quick."""

    def once() -> float:
        xi = images.detach().clone().requires_grad_(True)
        t0 = clock()
        torch.autograd.grad(F.normalize(model(xi), dim=1).sum(), xi)
        if xi.device.type == "cuda":
            torch.cuda.synchronize(xi.device)
        return clock() - t0

    with eval_mode(model):
        first = once()
        if slow is not None and first > slow:
            return [first]
        return [once() for _ in range(repeats)]
