"""EfficientViT's modules: the sandwich block, PatchMerging's downsample and the model."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.cga import WindowedCGA
from ..layers.conv import PatchMerging, Residual, depthwise_residual, ffn_residual, stem


# ---------------------------------------------------------------------------------- blocks
def ffn_hidden(dim: int, ffn_ratio: float) -> int:
    return round(dim * ffn_ratio)


class EfficientViTBlock(nn.Sequential):
    """Sandwich block: ``sandwich`` x (Residual DW, Residual FFN), Residual windowed CGA, then
    ``sandwich`` x (Residual DW, Residual FFN). Children ``dw{i}``, ``ffn{i}`` are numbered in
    forward order through the block, around ``mixer`` (the paper's names at ``sandwich=1``)."""

    def __init__(self, dim: int, *, key_dim: int, num_heads: int, value_dim: int,
                 ffn_ratio: float, sandwich: int, resolution: int, window_size: int,
                 kernels: Sequence[int]) -> None:
        mixer = Residual(WindowedCGA(dim, key_dim=key_dim, num_heads=num_heads,
                                     value_dim=value_dim, resolution=resolution,
                                     window_size=window_size, kernels=kernels))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(2 * sandwich):
            if i == sandwich:
                layers["mixer"] = mixer
            # zero-init last BN: every residual branch of the block starts as the identity
            layers[f"dw{i}"] = depthwise_residual(dim, bn_weight_init=0.0)
            layers[f"ffn{i}"] = ffn_residual(dim, ffn_hidden(dim, ffn_ratio))
        layers.setdefault("mixer", mixer)  # sandwich == 0: the attention alone
        super().__init__(layers)


def downsample(in_dim: int, out_dim: int, ffn_ratio: float) -> nn.Sequential:
    """Residual DW + FFN at the old width, PatchMerging, Residual DW + FFN at the new width."""

    def pair(dim: int) -> nn.Sequential:
        return nn.Sequential(depthwise_residual(dim),
                             ffn_residual(dim, ffn_hidden(dim, ffn_ratio)))

    return nn.Sequential(OrderedDict(
        res1=pair(in_dim), patchmerge=PatchMerging(in_dim, out_dim), res2=pair(out_dim)))


def stage_resolutions(img_size: int, stem_stride: int, num_stages: int) -> tuple[int, ...]:
    """Token-map side of each stage (each stride-2 3x3 conv maps r to ceil(r / 2))."""
    r = img_size
    for _ in range(stem_stride.bit_length() - 1):
        r = (r - 1) // 2 + 1
    sides = [r]
    for _ in range(num_stages - 1):
        sides.append((sides[-1] - 1) // 2 + 1)
    return tuple(sides)


# ----------------------------------------------------------------------------------- model
class EfficientViT(nn.Module):
    """Stem -> stages (stage i > 0 starts with :func:`downsample`) -> avg pool -> BN + Linear.
    ``key_dims``, ``value_dims`` and ``ffn_ratios`` have one entry per stage (a stage's
    downsample FFNs take its ratio).

    ``forward`` returns logits (B, num_classes). Inputs of another size than ``img_size``
    work too (windows pad); ``img_size`` only sets each stage's window (<= its resolution).
    """

    def __init__(self, *, in_chans: int, num_classes: int, img_size: int, stem_stride: int,
                 embed_dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 key_dims: Sequence[int], value_dims: Sequence[int],
                 ffn_ratios: Sequence[float], sandwich: int, kernels: Sequence[int],
                 window_size: int) -> None:
        super().__init__()
        self.patch_embed = stem(in_chans, embed_dims[0], stem_stride)
        sides = stage_resolutions(img_size, stem_stride, len(embed_dims))
        stages = []
        for i, dim in enumerate(embed_dims):
            blocks = [EfficientViTBlock(dim, key_dim=key_dims[i], num_heads=num_heads[i],
                                        value_dim=value_dims[i], ffn_ratio=ffn_ratios[i],
                                        sandwich=sandwich, resolution=sides[i],
                                        window_size=window_size, kernels=kernels)
                      for _ in range(depths[i])]
            down = downsample(embed_dims[i - 1], dim, ffn_ratios[i]) if i else nn.Identity()
            stages.append(nn.Sequential(OrderedDict(downsample=down,
                                                    blocks=nn.Sequential(*blocks))))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(OrderedDict(bn=nn.BatchNorm1d(embed_dims[-1]),
                                              linear=nn.Linear(embed_dims[-1], num_classes)))
        nn.init.trunc_normal_(self.head.linear.weight, std=0.02)
        nn.init.zeros_(self.head.linear.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer must not decay: the attention biases (as timm's model)."""
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's convs are faster on it, and the attention's token views of
        # q/k/v (B, H*W, C) then need no copies
        x = self.stages(self.patch_embed(x.contiguous(memory_format=torch.channels_last)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


