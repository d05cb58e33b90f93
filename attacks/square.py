"""Score-based random search in the L-infinity ball, after Square Attack (Andriushchenko, Croce, Flammarion and
Hein, "Square Attack: a query-efficient black-box adversarial attack via random search", ECCV 2020).

Two uses here (:mod:`attacks.engine`): a check for gradient masking on a few queries (it needs no gradient, so a
defense whose gradients mislead PGD does not mislead it; if it finds a better point than the gradient attacks on
the same query, their numbers are suspect), and, in the largest strong suites, an attack of its own on every
query whose points join the worst case, as Square does in AutoAttack.

Threat model: the same ball as :mod:`attacks.pgd`. The search starts from vertical stripes (every column of every
channel at ``x0 +- eps``, random signs) and at each step proposes, per image, one square window whose pixels are
set to ``x0 +- eps`` (one random sign per channel); a proposal is kept when it lowers the image's objective.
The window covers a fraction ``p`` of the image that starts at ``p_init`` and halves at the paper's iterations
(10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-step budget), rescaled to ``steps``.
The rescaling is Square's own rule (AutoAttack's 5,000-query run halves at 5, 25, 100, ... 4,000).
Departure from the paper: it minimises whatever per-image objective it is given (the ranking attacks' losses)
rather than a classification margin; the engine measures the scored goal at every proposal and keeps the best
measured point, not the point of lowest loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from attacks.pgd import Bound, box

#: where the paper halves the window fraction, as fractions of its 10,000-step budget
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(t: int, steps: int, p_init: float) -> float:
    """The fraction of pixels a proposal changes at step ``t`` of ``steps``."""
    scaled = int(t * 10000 / max(steps, 1))
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


@torch.no_grad()
def random_search(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    eps: float,
    steps: int,
    generator: torch.Generator,
    p_init: float = 0.05,
    bounds: tuple[Bound, Bound] = (0.0, 1.0),
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the per-image ``objective(x) -> (B,)`` without gradients; return (best x, its objective (B,)).

    ``x0`` (B, C, H, W) or (B, F) (treated as one row of pixels); ``steps`` objective calls after the first;
    every random draw comes from ``generator`` (CPU), so the search is reproducible on any device.
    ``active`` (B,) bool: search only these images (``objective`` receives their rows, in order; the others keep
    ``x0`` and an objective of +inf). The draws are made for all B images whatever ``active`` says, so an image's
    search does not depend on which others are searched.
    """
    x0 = x0.detach()
    shape = x0.shape
    img = x0.reshape(shape[0], 1, 1, -1) if x0.dim() == 2 else x0
    b, c, h, w = img.shape
    lo, hi = box(img, eps, (bounds[0], bounds[1]))

    def signs(*size: int) -> torch.Tensor:
        return (torch.randint(2, size, generator=generator) * 2 - 1).to(img.device, img.dtype)

    act = torch.ones(b, dtype=torch.bool, device=img.device) if active is None else active.to(img.device)

    def measured(x: torch.Tensor) -> torch.Tensor:
        value = torch.full((b,), math.inf, dtype=torch.float64, device=img.device)
        if act.any():
            value[act] = objective(x[act].reshape((-1,) + shape[1:])).double()
        return value

    x = torch.minimum(torch.maximum(img + eps * signs(b, c, 1, w), lo), hi)
    best = measured(x)
    rows, cols = torch.arange(h, device=img.device), torch.arange(w, device=img.device)
    for t in range(steps):
        side = max(1, min(h, w, round(math.sqrt(window_fraction(t, steps, p_init) * h * w))))
        top = torch.randint(h - side + 1, (b,), generator=generator).to(img.device)
        left = torch.randint(w - side + 1, (b,), generator=generator).to(img.device)
        inside = (((rows.view(1, -1) >= top.view(-1, 1)) & (rows.view(1, -1) < (top + side).view(-1, 1))).view(b, 1, h, 1)
                  & ((cols.view(1, -1) >= left.view(-1, 1)) & (cols.view(1, -1) < (left + side).view(-1, 1))).view(b, 1, 1, w))
        proposal = torch.where(inside, img + eps * signs(b, c, 1, 1), x)
        proposal = torch.minimum(torch.maximum(proposal, lo), hi)
        value = measured(proposal)
        keep = value < best
        x = torch.where(keep.view(b, 1, 1, 1), proposal, x)
        best = torch.where(keep, value, best)
    x = torch.where(act.view(b, 1, 1, 1), x, img)
    return x.reshape(shape), best
