"""Structural groups: which slices of which state-dict tensors make one prunable unit.

A group is everything a structure owns, i.e. what disappears when it is removed: an attention
head (its Q, K and V rows and its columns of the output projection), a Q/K channel pair, a V
channel, an FFN hidden channel, or a whole block. Taylor importance (trainers/importance.py)
scores groups from these slices; pruning (trainers/pruning.py) slices the same ones away, so
scoring and pruning cannot disagree about what a channel is.

Names (one :class:`Groups` per name, in forward order):

- ViT (``VisionTransformer``): ``blocks.{b}.attn.heads``, ``blocks.{b}.attn.qk``,
  ``blocks.{b}.attn.v``, ``blocks.{b}.pre_ffns.{j}.hidden`` (sandwich FFNs),
  ``blocks.{b}.mlp.hidden`` and ``blocks.depth`` (one group per block); the ViTs nested in
  one (a multi-stage model's earlier stages) the same under their path: ``stages.{k}.blocks``.
- EfficientViT: ``stages.{s}.downsample.res1.hidden`` and ``.res2.hidden`` (the FFNs around
  PatchMerging), ``stages.{s}.blocks.{b}.ffn{i}.hidden``, ``stages.{s}.blocks.{b}.attn.heads``
  / ``.qk`` / ``.v`` and ``stages.{s}.blocks.depth``.

Q/K and V groups are head-major: group ``head * width + c`` is channel c of that head (Q/K
channels are per head, so pruning may keep different channel indices in different heads). The
Q and K channels of one index form one group: q.k needs both. A Q channel of EfficientViT's
CGA also owns its channel of the depthwise conv (and BN) that filters q.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from search_spaces.efficientvit import EfficientViT
from search_spaces.layers.attention import MultiHeadAttention
from search_spaces.layers.attention import TokenGroupAttention as TokenCGA
from search_spaces.layers.cga import GroupAttention as WindowCGA
from search_spaces.layers.conv import ConvFFN
from search_spaces.layers.mlp import Mlp
from search_spaces.vit import VisionTransformer

BN_KEYS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
COMPONENT_OF = {"heads": "heads", "qk": "qk", "v": "v", "hidden": "ffn", "depth": "depth"}


@dataclasses.dataclass(frozen=True)
class Part:
    """Slices of state-dict tensor ``key`` along ``axis``: slice j belongs to group ``ids[j]``
    (-1: to none of this name's groups)."""

    key: str
    axis: int
    ids: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Groups:
    """``size`` groups made of ``parts``; ``heads`` > 1 when the groups are head-major (group
    ``h * (size // heads) + c``), 1 otherwise. Parts may name buffers (BN statistics): they
    are sliced by pruning and ignored by scoring (they have no gradient)."""

    size: int
    parts: tuple[Part, ...]
    heads: int = 1


def component(name: str) -> str:
    """"heads", "qk", "v", "ffn" or "depth": what a group name (its last word) describes."""
    return COMPONENT_OF[name.rsplit(".", 1)[-1]]


def group_layout(model: nn.Module) -> dict[str, Groups]:
    """The groups of a ViT or EfficientViT model (see the module docstring)."""
    if isinstance(model, VisionTransformer):
        return _vit_layout(model)
    if isinstance(model, EfficientViT):
        return _efficientvit_layout(model)
    raise TypeError(f"no structural groups known for {type(model).__name__}; "
                    "expected a VisionTransformer or an EfficientViT")


def _cat(*pieces: torch.Tensor) -> torch.Tensor:
    return torch.cat([p.long() for p in pieces])


def _none(n: int) -> torch.Tensor:
    return torch.full((n,), -1, dtype=torch.long)


def _each(h: int, width: int) -> torch.Tensor:
    """Head index of each of h x width head-major channels."""
    return torch.arange(h).repeat_interleave(width)


def _rows(keys: list[str], ids: torch.Tensor) -> list[Part]:
    return [Part(key, 0, ids) for key in keys]


def _linear(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def _convbn(prefix: str) -> list[str]:
    return [f"{prefix}.conv.weight", *(f"{prefix}.{k}" for k in BN_KEYS)]


# ------------------------------------------------------------------------------------ ViT
def _vit_layout(model: VisionTransformer) -> dict[str, Groups]:
    """Every ViT in ``model``: the ViTs nested in it first (a multi-stage model's earlier
    stages, their names prefixed with their module path, e.g. ``stages.0.blocks.1.mlp.hidden``),
    then its own blocks."""
    nested = [(f"{name}.", vit) for name, vit in model.named_modules()
              if name and isinstance(vit, VisionTransformer)]
    layout: dict[str, Groups] = {}
    for prefix, vit in (*nested, ("", model)):
        layout.update(_blocks_layout(model, prefix, vit))
    return layout


def _blocks_layout(root: nn.Module, prefix: str, vit: VisionTransformer) -> dict[str, Groups]:
    layout: dict[str, Groups] = {}
    for b, block in enumerate(vit.blocks):
        p = f"{prefix}blocks.{b}"
        if isinstance(block.attn, MultiHeadAttention):
            layout.update(_mhsa(f"{p}.attn", block.attn))
        elif isinstance(block.attn, TokenCGA):
            layout.update(_token_cga(f"{p}.attn", block.attn))
        else:
            raise TypeError(f"{p}.attn: no groups known for {type(block.attn).__name__}")
        for j, ffn in enumerate(block.pre_ffns):
            layout[f"{p}.pre_ffns.{j}.hidden"] = _mlp(f"{p}.pre_ffns.{j}.mlp", ffn.mlp)
        layout[f"{p}.mlp.hidden"] = _mlp(f"{p}.mlp", block.mlp)
    layout[f"{prefix}blocks.depth"] = _depth(root, f"{prefix}blocks", len(vit.blocks))
    return layout


def _mhsa(p: str, attn: MultiHeadAttention) -> dict[str, Groups]:
    """qkv rows are [q of every head | k of every head | v of every head]."""
    h, qk, v = attn.num_heads, attn.qk_dim, attn.v_dim
    qkv, proj = _linear(f"{p}.qkv"), f"{p}.proj.weight"
    heads = _cat(_each(h, qk), _each(h, qk), _each(h, v))
    qk_ids = _cat(torch.arange(h * qk), torch.arange(h * qk), _none(h * v))
    v_ids = _cat(_none(2 * h * qk), torch.arange(h * v))
    return {
        f"{p}.heads": Groups(h, (*_rows(qkv, heads), Part(proj, 1, _each(h, v)))),
        f"{p}.qk": Groups(h * qk, tuple(_rows(qkv, qk_ids)), heads=h),
        f"{p}.v": Groups(h * v, (*_rows(qkv, v_ids), Part(proj, 1, torch.arange(h * v))), h),
    }


def _token_cga(p: str, attn: TokenCGA) -> dict[str, Groups]:
    """Head i owns ``qkvs.{i}`` (rows [q | k | v]) and its columns of ``proj``."""
    h, qk, v = attn.num_heads, attn.qk_dim, attn.split
    heads, qks, vs = [], [], []
    for i in range(h):
        keys = _linear(f"{p}.qkvs.{i}")
        heads += _rows(keys, torch.full((2 * qk + v,), i))
        own = i * qk + torch.arange(qk)
        qks += _rows(keys, _cat(own, own, _none(v)))
        vs += _rows(keys, _cat(_none(2 * qk), i * v + torch.arange(v)))
    proj = f"{p}.proj.weight"
    return {
        f"{p}.heads": Groups(h, (*heads, Part(proj, 1, _each(h, v)))),
        f"{p}.qk": Groups(h * qk, tuple(qks), heads=h),
        f"{p}.v": Groups(h * v, (*vs, Part(proj, 1, torch.arange(h * v))), heads=h),
    }


def _mlp(p: str, mlp: Mlp) -> Groups:
    """Hidden channel c: row c of fc1 (and of the ``reuse`` Linear adding reused features to
    fc1's output, where there is one) and column c of fc2."""
    n = mlp.fc1.out_features
    ids = torch.arange(n)
    reuse = [Part(f"{p}.reuse.weight", 0, ids)] if hasattr(mlp, "reuse") else []
    return Groups(n, (*_rows(_linear(f"{p}.fc1"), ids), *reuse, Part(f"{p}.fc2.weight", 1, ids)))


def _depth(model: nn.Module, container: str, depth: int) -> Groups:
    """One group per block ``{container}.{b}``: every tensor of the block, whole."""
    pattern = re.compile(rf"^{re.escape(container)}\.(\d+)\.")
    parts = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        match = pattern.match(key)
        if match and tensor.dim() > 0:
            parts.append(Part(key, 0, torch.full((tensor.shape[0],), int(match.group(1)))))
    return Groups(depth, tuple(parts))


# ---------------------------------------------------------------------------- EfficientViT
def _efficientvit_layout(model: EfficientViT) -> dict[str, Groups]:
    layout: dict[str, Groups] = {}
    for s, stage in enumerate(model.stages):
        if s > 0:
            for pair in ("res1", "res2"):
                ffn = stage.downsample.get_submodule(pair)[1].m
                layout[f"stages.{s}.downsample.{pair}.hidden"] = _conv_ffn(
                    f"stages.{s}.downsample.{pair}.1.m", ffn)
        for b, block in enumerate(stage.blocks):
            p = f"stages.{s}.blocks.{b}"
            for name, child in block.named_children():
                if name.startswith("ffn"):
                    layout[f"{p}.{name}.hidden"] = _conv_ffn(f"{p}.{name}.m", child.m)
                elif name == "mixer":
                    layout.update(_window_cga(f"{p}.attn", f"{p}.mixer.m.attn", child.m.attn))
        layout[f"stages.{s}.blocks.depth"] = _depth(model, f"stages.{s}.blocks",
                                                    len(stage.blocks))
    return layout


def _conv_ffn(p: str, ffn: ConvFFN) -> Groups:
    n = ffn.pw1.conv.out_channels
    ids = torch.arange(n)
    return Groups(n, (*_rows(_convbn(f"{p}.pw1"), ids), Part(f"{p}.pw2.conv.weight", 1, ids)))


def _window_cga(name: str, p: str, attn: WindowCGA) -> dict[str, Groups]:
    """Head i owns ``qkvs.{i}`` (rows [q | k | v], conv + BN), ``dws.{i}`` (the depthwise
    filter of q: one channel per Q channel), its attention biases and its ``proj`` columns."""
    h, kd, vd = attn.num_heads, attn.key_dim, attn.value_dim
    heads, qks, vs = [], [], []
    for i in range(h):
        qkv, dw = _convbn(f"{p}.qkvs.{i}"), _convbn(f"{p}.dws.{i}")
        heads += _rows(qkv, torch.full((2 * kd + vd,), i)) + _rows(dw, torch.full((kd,), i))
        own = i * kd + torch.arange(kd)
        qks += _rows(qkv, _cat(own, own, _none(vd))) + _rows(dw, own)
        vs += _rows(qkv, _cat(_none(2 * kd), i * vd + torch.arange(vd)))
    proj = f"{p}.proj.1.conv.weight"
    heads += [Part(proj, 1, _each(h, vd)), Part(f"{p}.attention_biases", 0, torch.arange(h))]
    return {
        f"{name}.heads": Groups(h, tuple(heads)),
        f"{name}.qk": Groups(h * kd, tuple(qks), heads=h),
        f"{name}.v": Groups(h * vd, (*vs, Part(proj, 1, torch.arange(h * vd))), heads=h),
    }
