"""The backbones compute what their plain torch definitions compute: the fast pooling path changes no bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustbench_dml import backbones
from robustbench_dml.backbones.c2f2 import MaxPool


def _plain(net: nn.Module) -> nn.Module:
    """The same weights with torch's own ``nn.MaxPool2d`` in place of every :class:`MaxPool`."""
    ref = copy.deepcopy(net)
    for i, m in enumerate(ref.trunk):
        if isinstance(m, MaxPool):
            ref.trunk[i] = nn.MaxPool2d(m.kernel_size, m.stride)
    assert sum(isinstance(m, MaxPool) for m in ref.modules()) == 0
    return ref


def _digit_like(b: int, generator: torch.Generator) -> torch.Tensor:
    """MNIST-like images: a zero background (equal values in every pooling window: ties at the bias after the
    first convolution), 8-bit grey levels, and saturated blocks (ties at positive values)."""
    x = torch.zeros(b, 1, 28, 28)
    x[:, :, 6:22, 6:22] = torch.randint(0, 256, (b, 1, 16, 16), generator=generator) / 255
    x[:, :, 10:14, 10:14] = 1.0
    return x


@pytest.mark.parametrize("name", ["c2f2", "c2f2bn"])
def test_c2f2_embeds_and_differentiates_exactly_as_with_torch_s_own_pooling(name):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = backbones.create(name, embedding_dim=64).eval()
    with torch.no_grad():  # non-zero biases, so the background's ties are positive after the ReLU
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(0.01, 0.2, generator=g)
    ref = _plain(net)
    for b in (1, 7, 64):
        x = _digit_like(b, g)
        with torch.no_grad():
            assert torch.equal(net(x), ref(x))
        w = torch.randn(b, 64, generator=g)
        grads = []
        for m in (net, ref):
            xx = x.clone().requires_grad_(True)
            grads.append(torch.autograd.grad((m(xx) * w).sum(), xx)[0])
        assert torch.equal(*grads)
    assert net(x).requires_grad  # the gradient path is torch's own


def test_the_fast_pool_is_the_max_of_each_window():
    x = torch.tensor([[[[1.0, 3.0, 2.0, 2.0], [0.0, 3.0, 2.0, 2.0], [5.0, -1.0, 0.0, 0.0], [4.0, 6.0, 0.0, -2.0]]]])
    with torch.no_grad():
        assert MaxPool(2)(x).tolist() == [[[[3.0, 2.0], [6.0, 0.0]]]]
