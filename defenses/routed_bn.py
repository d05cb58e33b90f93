"""Routed ("disentangled", AdvProp-style) BatchNorm for MDProp.

:class:`RoutedBatchNorm` *is* the original BatchNorm (same parameters, buffers and state-dict keys, so the
main route loads from and exports to a plain backbone) plus auxiliary BNs ``aux_bn1``, ``aux_bn2``, ...
Routes: ``"clean"`` (main BN, the default and the only route used at evaluation), ``"adv1"``, ``"adv2"``, ...
(one aux BN each) and ``"mix"``: the batch rows are split into consecutive segments (``mix_sizes``), the first
normalised by the main BN and the k-th following by ``aux_bn{k}``, each with its own batch statistics.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustbench_dml.errors import UserError


class RoutedBatchNorm(_BatchNorm):
    """A BatchNorm (1d/2d/3d, the class of the BN it replaces) with ``n_aux`` auxiliary BNs and a route."""

    def __init__(self, bn: _BatchNorm, n_aux: int = 2, *, copy_stats: bool = False):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None,
                         dtype=bn.weight.dtype if bn.affine else None)
        self.base_cls = type(bn)
        self.load_state_dict(bn.state_dict())
        self.route = "clean"
        self.mix_sizes: tuple[int, ...] | None = None
        for k in range(1, n_aux + 1):
            aux = copy.deepcopy(bn)
            if not copy_stats:
                aux.reset_running_stats()  # reference: only the affine parameters are copied (mean 0, var 1)
            setattr(self, f"aux_bn{k}", aux)
        self.n_aux = n_aux

    def _check_input_dim(self, input: torch.Tensor) -> None:
        self.base_cls._check_input_dim(self, input)

    def _aux(self, k: int) -> nn.Module:
        return getattr(self, f"aux_bn{k}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self.route
        if route == "clean":
            return super().forward(x)
        if route == "mix":
            sizes = self.mix_sizes
            if sizes is None or sum(sizes) != x.shape[0] or len(sizes) > self.n_aux + 1:
                raise RuntimeError(f"mix route needs mix_sizes summing to {x.shape[0]}, got {sizes}")
            parts = torch.split(x, list(sizes))
            outs = [super().forward(parts[0])] + [self._aux(k)(p) for k, p in enumerate(parts[1:], start=1)]
            return torch.cat(outs)
        if route.startswith("adv"):
            return self._aux(int(route[3:]))(x)
        raise RuntimeError(f"unknown BN route {route!r}")

    def to_plain(self) -> _BatchNorm:
        """A plain BN of the original class with the main route's parameters and buffers."""
        ref = self.running_mean if self.running_mean is not None else self.weight
        plain = self.base_cls(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats,
                              device=ref.device if ref is not None else None,
                              dtype=ref.dtype if ref is not None else None)
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("aux_bn")})
        plain.train(self.training)
        return plain


def _replace(module: nn.Module, fn) -> int:
    count = 0
    for name, child in module.named_children():
        new = fn(child)
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += _replace(child, fn)
    return count


def add_routes(model: nn.Module, n_aux: int = 2, *, copy_stats: bool = False) -> nn.Module:
    """Replace every BatchNorm of ``model`` in place by a :class:`RoutedBatchNorm`; returns ``model``.
    Raises UserError if the model has no BatchNorm layer."""
    def fn(m):
        if isinstance(m, _BatchNorm) and not isinstance(m, RoutedBatchNorm):
            return RoutedBatchNorm(m, n_aux, copy_stats=copy_stats)
        return None

    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise UserError("mdprop needs a backbone with BatchNorm layers, e.g. --backbone c2f2bn (28x28) or resnet18")
    _replace(model, fn)
    return model


def strip_routes(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every RoutedBatchNorm replaced by a plain BN (main route): the state-dict
    keys of the plain backbone."""
    plain = copy.deepcopy(model)
    _replace(plain, lambda m: m.to_plain() if isinstance(m, RoutedBatchNorm) else None)
    return plain


def routed_modules(model: nn.Module) -> list[RoutedBatchNorm]:
    return [m for m in model.modules() if isinstance(m, RoutedBatchNorm)]


@contextlib.contextmanager
def bn_route(model: nn.Module, route: str, mix_sizes: Sequence[int] | None = None) -> Iterator[nn.Module]:
    """Route every RoutedBatchNorm of ``model`` through ``route`` inside the block; back to "clean" after."""
    mods = routed_modules(model)
    for m in mods:
        m.route, m.mix_sizes = route, (tuple(mix_sizes) if mix_sizes is not None else None)
    try:
        yield model
    finally:
        for m in mods:
            m.route, m.mix_sizes = "clean", None
