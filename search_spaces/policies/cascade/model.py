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
``aux["cascade_logits"]`` (what Taylor importance scores every stage by). The reuse modules are
search_spaces/policies/cascade/reuse.py; the contract side is the rest of this package (fields,
threshold fitting, cost).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...output import ModelOutput
from ...vit.model import VisionTransformer, init_weights
from .fields import CascadeParams
from .reuse import FeatureReuse, RelationReuse, ReuseMlp, reuse_widths


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

    def __init__(self, *, cascade: CascadeParams, **vit: Any) -> None:
        super().__init__(**vit)
        self.cascade = cascade
        patch = self.patch_embed.proj.kernel_size[0]
        self.sizes = tuple(g * patch for g in cascade.grids)
        dim, depth = self.cls_token.shape[-1], len(self.blocks)
        self.stages = nn.ModuleList(VisionTransformer(**{**vit, "img_size": size})
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
