"""What a ViT state dict says about its architecture (warm start from timm-format weights).

A ``vit`` state dict (ours or timm's ``VisionTransformer``: the same names) fixes the patch
size, width, depth, FFN ratio, sandwich depth, attention kind and image size by its tensor
shapes. The number of heads does not show in any shape (a qkv Linear of width 3 x dim serves
every head count), so it is left to the spec; per-head Q/K and V widths show only as their
sum: weights whose qkv is not 3 x dim come from our own exports, whose config says them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError
from .config import MAX_SEGMENTS, SEGMENTED

Shapes = Mapping[str, tuple[int, ...]]


def _shape(shapes: Shapes, name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ConfigError(f"tensor {name!r} is missing: not a vit state dict")
    return tuple(shapes[name])


def architecture_of_weights(shapes: Shapes) -> dict[str, Any]:
    """The architecture knobs (``vit`` dimension name -> value) that ``shapes`` (tensor
    name -> shape) fix; ``num_heads`` is not among them. ConfigError if they are not a
    ``vit`` state dict of the timm layout."""
    dim, chans, patch, _ = _shape(shapes, "patch_embed.proj.weight")
    tokens = _shape(shapes, "pos_embed")[1] - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConfigError(f"pos_embed holds {tokens} patch tokens: not a square grid")
    depth = len({m.group(1) for n in shapes if (m := re.match(r"blocks\.(\d+)\.", n))})
    if depth == 0:
        raise ConfigError("no tensors blocks.N.*: not a vit state dict")
    hidden = _shape(shapes, "blocks.0.mlp.fc1.weight")[0]
    sandwich = len({m.group(1) for n in shapes
                    if (m := re.match(r"blocks\.0\.pre_ffns\.(\d+)\.", n))})
    arch: dict[str, Any] = {"img_size": side * patch, "patch_size": patch, "embed_dim": dim,
                            "depth": depth, "mlp_ratio": hidden / dim, "sandwich": sandwich}
    if "blocks.0.attn.qkv.weight" in shapes:
        width = _shape(shapes, "blocks.0.attn.qkv.weight")[0]
        if width != 3 * dim:
            raise ConfigError(f"blocks.0.attn.qkv.weight has {width} outputs, not 3 x "
                              f"{dim}: per-head widths cannot be read from shapes; start "
                              "from an export folder (its config says them)")
        arch.update(attn="mhsa", qk_dim=None, v_dim=None)
        # the timm layout has one width for every block: so does every segment
        arch["segments"] = 1
        arch.update({f"{name}_{k}": arch[name] for name in SEGMENTED
                     for k in range(1, MAX_SEGMENTS + 1)})
    else:
        raise ConfigError("no blocks.0.attn.qkv.weight: only multi-head attention weights "
                          "of the timm layout can be read without a config; start from an "
                          "export folder")
    return arch


def in_chans_of_weights(shapes: Shapes) -> int:
    return _shape(shapes, "patch_embed.proj.weight")[1]
