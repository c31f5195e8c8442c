"""The isotropic ViT's modules: patch embedding, blocks and the static model.

Module names follow timm's ``VisionTransformer``, so the DeiT presets have timm's parameter
counts and load timm's state dicts unchanged. Blocks take ``forward(x, mask=None)`` and expose
their two residual branches (``attn_branch``, ``mlp_branch``), so that a token policy's model
(search_spaces/policies/) can run them its own way. A policy's model subclasses
:class:`VisionTransformer` as timm's DeiT extends timm's ViT: it passes
``weight_init="skip"``, adds its own modules, then calls :meth:`VisionTransformer.init_weights`
(so its modules are initialised with the rest, in module order).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import build_attention
from ..layers.mlp import Mlp

LN_EPS = 1e-6  # timm's ViT LayerNorm epsilon
Width = int | float | None | tuple  # one value for every block, or one per segment of depth


def segment_of(b: int, depth: int, segments: int) -> int:
    """The segment of block ``b`` when ``depth`` blocks make ``segments`` equal segments
    (as equal as whole blocks allow: the earlier segments take the extra blocks)."""
    return b * segments // depth


def at_block(value: Width, b: int, depth: int) -> int | float | None:
    """Block ``b``'s value of a width given for every block or per segment (a tuple)."""
    return value[segment_of(b, depth, len(value))] if isinstance(value, tuple) else value


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, C, H, W) -> (B, H/p * W/p, dim)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FFNBlock(nn.Module):
    """A residual FFN sub-block: x + mlp(norm(x)) (the extra FFNs of a sandwich block)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Block(nn.Module):
    """``sandwich`` FFN sub-blocks, then x + attn(norm1(x)), then x + mlp(norm2(x)).

    With ``sandwich=0`` this is timm's pre-norm ViT block (same parameter names). The two
    residual branches are separate methods so that a gating policy can scale them.
    """

    def __init__(self, *, dim: int, num_heads: int, qk_dim: int | None, v_dim: int | None,
                 mlp_ratio: float, attn: str, sandwich: int) -> None:
        super().__init__()
        self.pre_ffns = nn.ModuleList(FFNBlock(dim, mlp_ratio) for _ in range(sandwich))
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = build_attention(attn, dim, num_heads, qk_dim=qk_dim, v_dim=v_dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def attn_branch(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attn(self.norm1(x), mask)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for ffn in self.pre_ffns:
            x = ffn(x)
        x = x + self.attn_branch(x, mask)
        return x + self.mlp_branch(x)


class VisionTransformer(nn.Module):
    """Class-token ViT: ``embed`` -> blocks -> ``forward_head``; ``forward`` returns logits.
    ``qk_dim``, ``v_dim`` and ``mlp_ratio`` are one value for every block or a tuple of one
    per segment of depth (:func:`segment_of`).

    ``weight_init="skip"`` leaves the weights as PyTorch made them: a subclass that adds
    modules calls :meth:`init_weights` once they exist (timm's convention).
    """

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, num_classes: int,
                 embed_dim: int, depth: int, num_heads: int, qk_dim: Width, v_dim: Width,
                 mlp_ratio: Width, attn: str, sandwich: int, weight_init: str = "") -> None:
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, qk_dim=at_block(qk_dim, b, depth),
                  v_dim=at_block(v_dim, b, depth), mlp_ratio=at_block(mlp_ratio, b, depth),
                  attn=attn, sandwich=sandwich)
            for b in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """:func:`init_weights` over every module of the model."""
        init_weights(self)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer must not decay (as timm's ``VisionTransformer``)."""
        return {"pos_embed", "cls_token"}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, 1 + N, dim), class token first."""
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits from the class token (LayerNorm acts per token: norming it alone suffices)."""
        return self.head(self.norm(tokens[:, 0]))

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with every token through every block (a static model's forward; for a
        token policy's model, its weights run without the policy)."""
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.forward_head(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_full(x)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Truncated normal (std, cut at 2 std) for Linear weights, position and class tokens;
    zero biases; LayerNorm ones/zeros. The patch conv keeps PyTorch's init (as timm does)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for name in ("pos_embed", "cls_token"):
        param = getattr(model, name, None)
        if isinstance(param, nn.Parameter):
            nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)
