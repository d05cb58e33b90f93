"""The 28x28 backbone of RobRank (``rc2f2``), and a BatchNorm variant for routed-BN defenses (MDProp).

c2f2: conv5x5(1->32, pad 2)-ReLU-maxpool2-conv5x5(32->64, pad 2)-ReLU-maxpool2-FC(3136->1024)-ReLU-FC(1024->D).
Input (B, 1, 28, 28) in [0,1], no input normalisation (as in the reference).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_dml.backbones.base import BACKBONES, EmbeddingNet


class MaxPool(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose gradient-free CPU forward pools a channels-last copy: the same values to the bit (a
    maximum is exact), several times faster than torch's NCHW CPU kernel at these sizes, which made the two pools
    about a third of a forward pass (and forward passes are most of a gradient-free random search's cost and all of
    embedding a gallery). With gradients, on another device or for an input not in the NCHW layout, torch's own
    path runs (its backward is faster in NCHW, and the layer after sees the layout it would have seen)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
            return super().forward(x)
        y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size, self.stride,
                         self.padding, self.dilation, ceil_mode=self.ceil_mode)
        return y.contiguous()  # the next convolution sees the NCHW layout it always saw (same kernels, same sums)


def _c2f2(embedding_dim: int, in_channels: int, bn: bool) -> EmbeddingNet:
    def norm(c: int, two_d: bool = True) -> nn.Module:
        if not bn:
            return nn.Identity()
        return nn.BatchNorm2d(c) if two_d else nn.BatchNorm1d(c)

    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), norm(32), nn.ReLU(), MaxPool(2),
        nn.Conv2d(32, 64, 5, padding=2), norm(64), nn.ReLU(), MaxPool(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), norm(1024, two_d=False), nn.ReLU(),
    )
    head = nn.Linear(1024, embedding_dim)
    return EmbeddingNet(trunk, head, embedding_dim=embedding_dim, input_size=28, in_channels=in_channels)


@BACKBONES.register("c2f2")
def c2f2(embedding_dim: int = 512, in_channels: int = 1, pretrained: bool | str | None = None) -> EmbeddingNet:
    """RobRank's rc2f2 (no BatchNorm)."""
    return _c2f2(embedding_dim, in_channels, bn=False)


@BACKBONES.register("c2f2bn")
def c2f2bn(embedding_dim: int = 512, in_channels: int = 1, pretrained: bool | str | None = None) -> EmbeddingNet:
    """c2f2 with BatchNorm after each convolution and the hidden FC layer (for MDProp on 28x28 data)."""
    return _c2f2(embedding_dim, in_channels, bn=True)
