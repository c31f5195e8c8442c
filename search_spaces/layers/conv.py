"""Convolution blocks with BatchNorm: Conv+BN, residual wrappers, the 1x1 conv FFN, and
EfficientViT's conv stem and PatchMerging downsampler.

Every conv here is bias-free and followed by BatchNorm, which folds into the conv at inference.
``ConvBN`` does that fold itself in eval mode (one conv instead of a conv and a normalisation
pass over the activations, which is memory-bound), so the state dict keeps the separate conv and
BN parameters for training while eval-mode forwards cost one op.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import SqueezeExcite
from torch import nn


class ConvBN(nn.Sequential):
    """``Conv2d(bias=False)`` then ``BatchNorm2d``; children named ``conv`` and ``bn``.

    ``bn_weight_init=0`` makes the block output zero at init (used on the last layer of a
    residual branch, so that branch starts as the identity). In eval mode the BN statistics are
    folded into the conv weights on the fly (numerically the same, within float rounding; and
    differentiable, so eval-mode gradients still reach the conv and BN parameters).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, *, stride: int = 1,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv weight and bias with the BN running statistics folded in."""
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return self.conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.bn.running_var is None:
            return self.bn(self.conv(x))
        # folded per call, not cached: a cache could go stale (``p.data.mul_()`` bumps no
        # version counter) and would save only ~3% of an M0 forward on CPU
        weight, bias = self.folded()
        c = self.conv
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class Residual(nn.Module):
    """``x + m(x)``; the wrapped module is the child ``m``."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class ConvFFN(nn.Module):
    """Pointwise FFN on feature maps: 1x1 ConvBN -> ReLU -> 1x1 ConvBN (zero-init last BN)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvBN(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


def depthwise_residual(dim: int, *, kernel_size: int = 3, bn_weight_init: float = 1.0) -> Residual:
    """``x + DWConvBN(x)``: the depthwise conv that mixes neighbouring tokens locally."""
    return Residual(ConvBN(dim, dim, kernel_size, groups=dim, bn_weight_init=bn_weight_init))


def ffn_residual(dim: int, hidden: int) -> Residual:
    """``x + ConvFFN(x)``."""
    return Residual(ConvFFN(dim, hidden))


def stem(in_chans: int, dim: int, stride: int) -> nn.Sequential:
    """Four 3x3 ConvBN (widths dim/8, dim/4, dim/2, dim), ReLU between; log2(stride) of them
    (the first ones) have stride 2."""
    widths = (in_chans, dim // 8, dim // 4, dim // 2, dim)
    n_down = stride.bit_length() - 1
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(4):
        s = 2 if i < n_down else 1
        layers[f"conv{i + 1}"] = ConvBN(widths[i], widths[i + 1], 3, stride=s)
        if i < 3:
            layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def merge_hidden(dim: int) -> int:
    """PatchMerging's hidden width for an input of ``dim`` channels."""
    return 4 * dim


class PatchMerging(nn.Module):
    """x2 downsampling: 1x1 to 4x width, ReLU, DW 3x3 stride 2, ReLU, squeeze-excite, 1x1.

    No ReLU after the squeeze-excite (as timm and the official code): its input is >= 0 and
    its gate is a sigmoid, so one would change nothing but cost a pass over the 4x-wide map.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = merge_hidden(dim)
        self.conv1 = ConvBN(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(hidden, hidden, 3, stride=2, groups=hidden)
        self.se = SqueezeExcite(hidden, rd_ratio=0.25)
        self.conv3 = ConvBN(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))
