"""The width groups of an ``efficientvit`` model: what narrowing a stage's width cuts.

``stages.{s}.width``: residual channel c of stage s, head-major (``num_heads[s]`` chunks of
``width / heads``: chunk i is what head i of every cascaded group attention reads), so a cut
keeps the same count of every chunk. Channel c is everything that writes it (the stem's last
conv or PatchMerging's output conv, every depthwise conv, FFN output and attention
projection of the stage) and everything that reads it (every FFN input, the attention's
input chunk, PatchMerging's input, the head). The cascade adds head i's V output onto chunk
i+1, so head i's V channel j *is* residual channel j of chunk i+1 (the last head's V is its
block's own ``attn.v`` group, cut to the same count). That needs V as wide as the chunk
(``v_ratio`` 1, the paper's choice); a narrower V adds onto part of a chunk only, and the
width is then kept whole.

Widths that follow a stage's width: ``patch_embed.conv{i}.width`` (the stem's inner widths,
width/8, /4, /2), ``stages.{s}.downsample.merge.width`` (PatchMerging's hidden width, 4x its
input) and ``stages.{s}.downsample.se.width`` (its squeeze-excite's reduced width).

Every such cut is exact: the layers around these channels normalise with BatchNorm, per
channel (no statistic mixes a kept channel with a dropped one).
"""

from __future__ import annotations

import torch
from timm.layers import make_divisible
from torch import nn

from ..structure import Groups, Part, cat, rows, unowned

BN_KEYS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
STEM_SHARE = {1: 8, 2: 4, 3: 2}  # stem conv i writes width // STEM_SHARE[i]
SE_RATIO, SE_DIVISOR = 0.25, 8  # PatchMerging's squeeze-excite (timm's defaults)


def convbn(prefix: str) -> list[str]:
    return [f"{prefix}.conv.weight", *(f"{prefix}.{k}" for k in BN_KEYS)]


def se_width(hidden: int) -> int:
    """The squeeze-excite's reduced width over ``hidden`` channels (timm's rule)."""
    return make_divisible(hidden * SE_RATIO, SE_DIVISOR, round_limit=0.0)


def cuttable(model: nn.Module) -> bool:
    """Whether every cascaded group attention's V is as wide as its input chunk."""
    return all(a.value_dim == a.chunk for a in _attentions(model))


def _attentions(model: nn.Module):
    for stage in model.stages:
        for block in stage.blocks:
            yield block.mixer.m.attn


def width_groups(model: nn.Module) -> dict[str, Groups]:
    """Every width group of ``model`` (see the module docstring); the caller checks
    :func:`cuttable` first."""
    layout: dict[str, Groups] = {}
    for i in (1, 2, 3):
        conv = model.patch_embed.get_submodule(f"conv{i}").conv
        ids = torch.arange(conv.out_channels)
        layout[f"patch_embed.conv{i}.width"] = Groups(conv.out_channels, (
            *rows(convbn(f"patch_embed.conv{i}"), ids),
            Part(f"patch_embed.conv{i + 1}.conv.weight", 1, ids)))
    last = len(model.stages) - 1
    for s, stage in enumerate(model.stages):
        layout[f"stages.{s}.width"] = _stage_width(model, s, last)
        if s:
            merge = stage.downsample.patchmerge
            p = f"stages.{s}.downsample.patchmerge"
            hidden = torch.arange(merge.conv1.conv.out_channels)
            layout[f"stages.{s}.downsample.merge.width"] = Groups(len(hidden), (
                *rows(convbn(f"{p}.conv1") + convbn(f"{p}.conv2"), hidden),
                Part(f"{p}.se.fc1.weight", 1, hidden),
                *rows([f"{p}.se.fc2.weight", f"{p}.se.fc2.bias"], hidden),
                Part(f"{p}.conv3.conv.weight", 1, hidden)))
            reduced = torch.arange(merge.se.fc1.out_channels)
            layout[f"stages.{s}.downsample.se.width"] = Groups(len(reduced), (
                *rows([f"{p}.se.fc1.weight", f"{p}.se.fc1.bias"], reduced),
                Part(f"{p}.se.fc2.weight", 1, reduced)))
    return layout


def _residual_pair(p: str) -> tuple[list[str], list[str]]:
    """A (depthwise, FFN) residual pair at ``p``: what writes (rows) and reads (columns)."""
    return convbn(f"{p}.0.m") + convbn(f"{p}.1.m.pw2"), [f"{p}.1.m.pw1.conv.weight"]


def _stage_width(model: nn.Module, s: int, last: int) -> Groups:
    stage = model.stages[s]
    attn = stage.blocks[0].mixer.m.attn
    heads, n = attn.num_heads, attn.num_heads * attn.chunk
    ids = torch.arange(n)
    out = convbn("patch_embed.conv4") if s == 0 else convbn(f"stages.{s}.downsample."
                                                            "patchmerge.conv3")
    into: list[str] = []
    parts: list[Part] = []
    if s:
        w, r = _residual_pair(f"stages.{s}.downsample.res2")
        out, into = out + w, into + r
    if s < last:
        w, r = _residual_pair(f"stages.{s + 1}.downsample.res1")
        out, into = out + w, into + r + [f"stages.{s + 1}.downsample.patchmerge.conv1.conv."
                                         "weight"]
    else:
        out += [f"head.bn.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        into.append("head.linear.weight")
    for b, block in enumerate(stage.blocks):
        p = f"stages.{s}.blocks.{b}"
        for name, child in block.named_children():
            if name.startswith("dw"):
                out += convbn(f"{p}.{name}.m")
            elif name.startswith("ffn"):
                out += convbn(f"{p}.{name}.m.pw2")
                into.append(f"{p}.{name}.m.pw1.conv.weight")
            else:
                parts += _attention(f"{p}.mixer.m.attn", child.m.attn)
    parts += [Part(key, 0, ids) for key in out] + [Part(key, 1, ids) for key in into]
    return Groups(n, tuple(parts), heads=heads)


def _attention(p: str, attn: nn.Module) -> list[Part]:
    """Chunk i is head i's input and head i-1's V (rows 2 * key_dim onwards of its qkv); the
    projection writes every channel and reads head i's V as chunk i+1."""
    h, kd, cw = attn.num_heads, attn.key_dim, attn.chunk
    parts = [Part(f"{p}.qkvs.{i}.conv.weight", 1, i * cw + torch.arange(cw)) for i in range(h)]
    for i in range(1, h):
        parts += rows(convbn(f"{p}.qkvs.{i - 1}"), cat(unowned(2 * kd), i * cw + torch.arange(cw)))
    parts += rows(convbn(f"{p}.proj.1"), torch.arange(h * cw))
    parts.append(Part(f"{p}.proj.1.conv.weight", 1, cat(cw + torch.arange((h - 1) * cw),
                                                         unowned(cw))))
    return parts
