"""The one projected-gradient engine (L-infinity), shared by the evaluation attacks and the training-time
adversaries of the defenses (RobRank).

Threat model: the L-infinity ball of radius ``eps`` around the clean images, intersected with ``bounds``
(the [0,1] pixel box by default). Objectives are *minimised*. Each step moves by ``alpha * sign(grad)``;
with ``steps == 1`` the step is ``eps`` (FGSM). Projection, then clamp. No random start unless asked.
Only the input gradient is computed (``torch.autograd.grad``), so parameter ``.grad`` is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
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
    lo = torch.clamp(x0 - eps, min=bounds[0]) if not isinstance(bounds[0], torch.Tensor) else torch.maximum(x0 - eps, bounds[0])
    hi = torch.clamp(x0 + eps, max=bounds[1]) if not isinstance(bounds[1], torch.Tensor) else torch.minimum(x0 + eps, bounds[1])
    x = x0.clone()
    if _positive(random_start):
        noise = torch.rand(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
        x = torch.minimum(torch.maximum(x0 + (2 * noise - 1) * random_start, lo), hi)
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
