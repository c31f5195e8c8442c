"""Isotropic vision transformer (ViT / DeiT) with EfficientViT block options.

- "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
  Dosovitskiy et al., ICLR 2021, https://arxiv.org/abs/2010.11929
- "Training data-efficient image transformers & distillation through attention",
  Touvron et al., ICML 2021, https://arxiv.org/abs/2012.12877

Patch embedding (a stride-``patch`` conv), a class token, a learned absolute position
embedding over 1 + N tokens, ``depth`` pre-norm blocks, a final LayerNorm and a Linear head on
the class token. Module names follow timm's ``VisionTransformer``, so the ``deit_tiny`` and
``deit_small`` presets have timm's parameter counts and load timm's state dicts unchanged.

Search options beyond DeiT (PAPERS.md section 1): per-head Q/K and V widths, EfficientViT's
cascaded group attention (``attn="cga"``) and the "sandwich" layout (``sandwich=k``: k extra
FFN sub-blocks before each attention, raising the FFN share of the network as EfficientViT
found useful).

Token policies (search_spaces/policies/) change how the blocks run: ``token_policy="halting"``
(A-ViT's adaptive token halting), ``"gating"`` (AdaViT's usage gates for heads, branches and
patch tokens) and ``"cascade"`` (DVT's cascade of stages with increasing token grids and early
exit). A policy's model subclasses this family's :class:`VisionTransformer` and returns
``ModelOutput(logits, aux)``: a masked (differentiable) path in training mode and a path that
really skips work in eval mode. The family names no policy: its config, dims, budget knobs,
suggest and build ask the policy registry. To add a policy, see search_spaces/policies/.

- model.py: the blocks and the static model;
- config.py: :class:`ViTConfig` (with every policy's fields) and the DeiT presets;
- space.py: dims, their checks, suggest, build and the registry entry ``vit``;
- weights.py: what a timm-layout state dict says about the architecture (warm start).
"""

from __future__ import annotations

from .. import policies
from .config import PRESETS, STATIC, TOKEN_POLICIES, ViTConfig
from .model import LN_EPS, Block, FFNBlock, PatchEmbed, VisionTransformer, init_weights
from .space import (
    ARCHITECTURE,
    DIMS,
    MAX_TOKENS,
    adaptive,
    build,
    check_dims,
    params,
    suggest,
)
from .weights import architecture_of_weights, in_chans_of_weights

HALT_KNOBS = tuple(policies.halting.DIMS)  # the halting policy's own knobs (older callers)

__all__ = ["ARCHITECTURE", "DIMS", "HALT_KNOBS", "LN_EPS", "MAX_TOKENS", "PRESETS", "STATIC",
           "TOKEN_POLICIES", "Block", "FFNBlock", "PatchEmbed", "ViTConfig", "VisionTransformer",
           "adaptive", "architecture_of_weights", "build", "check_dims", "in_chans_of_weights",
           "init_weights", "params", "suggest"]
