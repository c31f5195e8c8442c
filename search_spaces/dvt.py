"""DVT cascades for the isotropic ViT: few tokens for easy images, with real early exit.

"Not All Images are Worth 16x16 Words: Dynamic Transformers for Efficient Image
Recognition", Wang et al., NeurIPS 2021, https://arxiv.org/abs/2105.15075 (PAPERS.md
section 4).

A cascade of 2 or 3 ViT stages of the same structure (the ``vit`` family's blocks, with
separate weights) and increasing token grids. Stage k sees the image resized (bilinear,
antialiased when shrinking) to ``grid_k * patch_size`` pixels and embeds it with the same
patch size, so any grid is possible (changing the patch size instead would only give grids
that divide the image: 28 pixels allow 2, 4, 7 or 14 tokens a side). This is how DVT's
T2T-ViT cascade gets its 7x7 and 10x10 stages from 224 pixels. The last stage runs at the
config's own grid ``img_size // patch_size`` on the unresized image and is named exactly like
a static ViT (``patch_embed``, ``blocks``, ``head``, ...): a static parent's weights fit it
(warm start), the earlier stages live under ``stages.*``.

Reuse from stage k-1 to stage k (each on or off):

- feature reuse: stage k-1's final patch tokens -> LayerNorm -> MLP (dim -> dim/3 -> dim/8;
  the paper's 384 -> 128 -> 48) -> reshaped to its grid, resized to stage k's grid (nearest
  upsampling by the smallest integer factor reaching it, then adaptive average pooling, as
  DVT does), the class token gets zeros -> given to every FFN of stage k. The paper
  concatenates it to the FFN input (the first Linear takes dim + reuse width); here that
  Linear is split into the static ``fc1`` and a bias-free ``reuse`` Linear whose outputs are
  summed, which is the same function and the same MACs and keeps ``fc1`` the static shape.
- relationship reuse: all pre-softmax attention logits of stage k-1 (L layers x H heads
  maps) -> a 1x1 MLP over the L*H channels (hL -> 3hL -> hL) -> resized on both token axes
  (patch-to-patch maps as grids on each axis, the class token's row and column on the patch
  axis, the class-to-class entry kept) -> layer l of stage k adds maps l*H..(l+1)*H-1 to its
  logits before the softmax (``forward_logits`` of search_spaces/layers/attention.py; the
  fused attention runs where no logits are needed).

In training every stage runs on every image (``aux["cascade_logits"]``: the earlier stages'
logits (B, S-1, C), the output's logits the last stage's: the loss is the paper's equal-weight
sum of the stages' cross-entropies). In evaluation an image leaves at the first stage k < S
whose max softmax probability reaches ``thresholds[k]`` (1 turns that exit off) and the next
stage (and its reuse modules) runs only on the images still running, with their upstream
tokens and logits; the output is each image's exit logits, ``aux["cascade_exit"]`` (B,) the
stage it left at (0-based) and ``aux["cascade_confidence"]`` (B, S) each stage's max
probability (NaN where the stage did not run); when no image left early, also
``aux["cascade_logits"]`` (what Taylor importance scores every stage by). The contract side
(fields, threshold fitting, cost) is search_spaces/cascading.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cascading import CascadeParams
from .layers.mlp import Mlp
from .output import ModelOutput
from .vit import LN_EPS, VisionTransformer, init_weights


def reuse_widths(dim: int) -> tuple[int, int]:
    """Hidden and output widths of the feature-reuse MLP: the paper's 128 and 48 at 384."""
    return max(1, round(dim / 3)), max(1, round(dim / 8))


def resize_grid(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, g, g) maps to (..., C, size, size): nearest upsampling by the smallest
    integer factor reaching ``size``, then adaptive average pooling."""
    g = x.shape[-1]
    if g == size:
        return x
    factor = -(-size // g)
    if factor > 1:
        x = F.interpolate(x, size=(g * factor, g * factor), mode="nearest")
    return F.adaptive_avg_pool2d(x, size)


def relation_matrix(g_from: int, g_to: int) -> torch.Tensor:
    """The linear map (1 + g_to^2, 1 + g_from^2) that :func:`resize_grid` applies to one
    token axis of attention maps, the class token's entry kept apart: one matrix product
    per axis instead of interpolating many small maps (measured 28x faster on CPU)."""
    n1, n2 = g_from * g_from, g_to * g_to
    basis = torch.eye(n1).reshape(n1, 1, g_from, g_from)
    matrix = torch.zeros(1 + n2, 1 + n1)
    matrix[0, 0] = 1.0
    matrix[1:, 1:] = resize_grid(basis, g_to).reshape(n1, n2).T
    return matrix


def resize_relation(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Attention maps (B, C, 1 + g_from^2, 1 + g_from^2) -> (B, C, 1 + g_to^2, 1 + g_to^2)
    by ``matrix`` (:func:`relation_matrix`) on both token axes: each patch axis resized as a
    grid, the class token's row, column and entry apart."""
    matrix = matrix.to(x.dtype)
    return matrix @ x @ matrix.T


class ReuseMlp(nn.Module):
    """An FFN whose input gets reused features: ``fc2(act(fc1(x) + reuse(features)))``,
    i.e. the paper's first Linear on [x, features] with its weight split in two."""

    hidden_inputs = ("reuse",)  # Linears adding to fc1's output: their rows are hidden channels

    def __init__(self, mlp: Mlp, reuse_dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = mlp.fc1, mlp.act, mlp.fc2
        self.reuse = nn.Linear(reuse_dim, self.fc1.out_features, bias=False)
        nn.init.trunc_normal_(self.reuse.weight, std=0.02, a=-0.04, b=0.04)  # as init_weights

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc1(x)
        if features is not None:
            h = h + self.reuse(features)
        return self.fc2(self.act(h))


class FeatureReuse(nn.Module):
    """Stage k-1's final tokens (B, 1 + g_from^2, D) -> reused features (B, 1 + g_to^2, r)."""

    def __init__(self, dim: int, g_from: int, g_to: int) -> None:
        super().__init__()
        hidden, self.width = reuse_widths(dim)
        self.g_from, self.g_to = g_from, g_to
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden,
                                                                                    self.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        f = self.fc2(self.act(self.fc1(self.norm(tokens[:, 1:]))))  # patch tokens only
        f = f.transpose(1, 2).reshape(b, self.width, self.g_from, self.g_from)
        f = resize_grid(f, self.g_to).flatten(2).transpose(1, 2)
        return torch.cat([f.new_zeros(b, 1, self.width), f], dim=1)


class RelationReuse(nn.Module):
    """Stage k-1's logits (B, L, H, N1, N1) -> per-layer biases (B, L, H, N2, N2)."""

    def __init__(self, layers: int, heads: int, g_from: int, g_to: int) -> None:
        super().__init__()
        c = layers * heads
        self.layers, self.heads, self.g_from, self.g_to = layers, heads, g_from, g_to
        self.fc1, self.act, self.fc2 = nn.Linear(c, 3 * c), nn.GELU(), nn.Linear(3 * c, c)
        # built once here, never while a forward is traced (a MACs count sees only its use)
        self.register_buffer("resize", relation_matrix(g_from, g_to), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        b, n = logits.shape[0], logits.shape[-1]
        x = logits.reshape(b, self.layers * self.heads, n, n).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(x))).permute(0, 3, 1, 2)  # a 1x1 MLP over channels
        x = resize_relation(x, self.resize)
        return x.reshape(b, self.layers, self.heads, *x.shape[-2:])


def ffn(mlp: nn.Module, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    return mlp(x) if features is None else mlp(x, features)


def run_stage(stage: VisionTransformer, images: torch.Tensor, size: int,
              features: torch.Tensor | None, bias: torch.Tensor | None, *, keep_logits: bool,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One stage on ``images`` resized to ``size`` pixels: its final tokens, its logits and
    (``keep_logits``) every layer's pre-softmax attention logits (B, L, H, N, N)."""
    if images.shape[-1] != size:
        shrink = size < images.shape[-1]
        images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False,
                               antialias=shrink)
    x = stage.embed(images)
    kept = []
    for index, block in enumerate(stage.blocks):
        for pre in block.pre_ffns:
            x = x + ffn(pre.mlp, pre.norm(x), features)
        if bias is None and not keep_logits:
            x = x + block.attn(block.norm1(x))
        else:
            out, logits = block.attn.forward_logits(block.norm1(x),
                                                    None if bias is None else bias[:, index])
            x = x + out
            kept.append(logits)
        x = x + ffn(block.mlp, block.norm2(x), features)
    return x, stage.forward_head(x), torch.stack(kept, dim=1) if keep_logits else None


class CascadeViT(VisionTransformer):
    """The last stage is this ViT itself; ``stages`` holds the earlier ones, ``feature_reuse``
    and ``relation_reuse`` the modules feeding stage k from stage k-1 (index k-1)."""

    def __init__(self, *, cascade: CascadeParams, **vit: object) -> None:
        super().__init__(**vit)
        self.cascade = cascade
        patch = self.patch_embed.proj.kernel_size[0]
        self.sizes = tuple(g * patch for g in cascade.grids)
        dim, depth = self.cls_token.shape[-1], len(self.blocks)
        earlier = {**vit, "halting": None, "gating": None}
        self.stages = nn.ModuleList(VisionTransformer(**{**earlier, "img_size": size})
                                    for size in self.sizes[:-1])
        pairs = list(zip(cascade.grids[:-1], cascade.grids[1:], strict=True))
        if cascade.feature_reuse:
            self.feature_reuse = nn.ModuleList(FeatureReuse(dim, a, b) for a, b in pairs)
            width = reuse_widths(dim)[1]
            for stage in self.stage_list()[1:]:
                for block in stage.blocks:
                    block.mlp = ReuseMlp(block.mlp, width)
                    for pre in block.pre_ffns:
                        pre.mlp = ReuseMlp(pre.mlp, width)
        if cascade.relation_reuse:
            heads = self.blocks[0].attn.num_heads
            self.relation_reuse = nn.ModuleList(RelationReuse(depth, heads, a, b)
                                                for a, b in pairs)
        for name in ("feature_reuse", "relation_reuse"):
            if hasattr(self, name):
                init_weights(getattr(self, name))

    def stage_list(self) -> list[VisionTransformer]:
        return [*self.stages, self]

    def run(self, k: int, images: torch.Tensor, tokens: torch.Tensor | None,
            logits: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Stage ``k`` (with its reuse modules) on ``images``, given stage k-1's final
        ``tokens`` and attention ``logits`` (None for stage 0)."""
        features = self.feature_reuse[k - 1](tokens) if k and self.cascade.feature_reuse \
            else None
        bias = self.relation_reuse[k - 1](logits) if k and self.cascade.relation_reuse \
            else None
        keep = self.cascade.relation_reuse and k < len(self.sizes) - 1
        return run_stage(self.stage_list()[k], images, self.sizes[k], features, bias,
                         keep_logits=keep)

    def forward_stages(self, x: torch.Tensor, stages: int | None = None) -> list[torch.Tensor]:
        """Every image through the first ``stages`` stages (default all): their logits."""
        tokens = logits = None
        outs = []
        for k in range(len(self.sizes) if stages is None else stages):
            tokens, out, logits = self.run(k, x, tokens, logits)
            outs.append(out)
        return outs

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the last stage with every stage run on every image (no exit)."""
        return self.forward_stages(x)[-1]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if self.training:
            outs = self.forward_stages(x)
            return ModelOutput(outs[-1], {"cascade_logits": torch.stack(outs[:-1], dim=1)})
        return self.forward_exit(x)

    def forward_exit(self, x: torch.Tensor) -> ModelOutput:
        """Early exit: after stage k < S-1 the images confident enough leave the batch."""
        b, last = x.shape[0], len(self.sizes) - 1
        rows = torch.arange(b, device=x.device)
        exit_stage = torch.full((b,), last, dtype=torch.long, device=x.device)
        confidence = torch.full((b, last + 1), float("nan"), device=x.device)
        out = tokens = logits = None
        earlier = []  # the earlier stages' logits while every image runs every stage
        for k in range(last + 1):
            tokens, stage_out, logits = self.run(k, x, tokens, logits)
            if out is None:
                out = stage_out.new_zeros(b, stage_out.shape[-1])
            out[rows] = stage_out
            if k < last and rows.numel() == b:
                earlier.append(stage_out)
            conf = stage_out.detach().float().softmax(dim=-1).amax(dim=-1)
            confidence[rows, k] = conf
            threshold = self.cascade.thresholds[k] if k < last else 1.0
            if threshold >= 1.0:  # the last stage answers; an exit at 1 is off
                continue
            leave = conf >= threshold
            exit_stage[rows[leave]] = k
            stay = (~leave).nonzero().squeeze(1)
            if stay.numel() == 0:
                break
            if stay.numel() < rows.numel():
                rows, x, tokens = rows[stay], x[stay], tokens[stay]
                logits = None if logits is None else logits[stay]
        aux = {"cascade_exit": exit_stage, "cascade_confidence": confidence}
        if len(earlier) == last:  # no image left early: every stage's logits are known
            aux["cascade_logits"] = torch.stack(earlier, dim=1)
        return ModelOutput(out, aux)
