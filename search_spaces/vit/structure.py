"""The structure of a ``vit`` config (search_spaces/structure.py): its groups, what prunes.

Group names, in forward order: ``blocks.{b}.attn.heads``, ``blocks.{b}.attn.qk``,
``blocks.{b}.attn.v``, ``blocks.{b}.pre_ffns.{j}.hidden`` (sandwich FFNs),
``blocks.{b}.mlp.hidden`` and ``blocks.depth`` (one group per block); the ViTs nested in one
(a cascade's earlier stages) the same under their path, e.g. ``stages.{k}.blocks``.

Q/K and V groups are head-major: group ``head * width + c`` is channel c of that head (Q/K
channels are per head, so pruning may keep different channel indices in different heads). The
Q and K channels of one index form one group: q.k needs both.

A config has one ``num_heads`` and ``depth``, and ``qk_dim``, ``v_dim`` and ``mlp_ratio`` for
all blocks or per segment of depth, so pruning keeps ``round(keep * count)`` (at least 1) of a
component in every block of a segment; the FFN width is ``int(embed_dim * mlp_ratio)``, and
the new ``mlp_ratio`` is chosen (up to the next float) so that this is exactly the kept count.
Slicing to a config of other per-segment widths (inheritance) reads each kept block's widths
at its place in the new depth.

Cascaded group attention (``attn="cga"``) cannot lose heads or V channels: head i reads input
chunk i of ``dim / heads`` channels (another head count re-splits the input rather than
dropping a slice), and head i's output is added to head i+1's input chunk channel by channel,
and those channels are the residual stream's. A token policy may keep more whole
(``TokenPolicy.unprunable``: a cascade with relationship reuse keeps heads and depth) and
answer with more logits (``TokenPolicy.answers``: every exit of a cascade).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..layers.attention import MultiHeadAttention
from ..layers.attention import TokenGroupAttention as TokenCGA
from ..layers.cga import UNPRUNABLE as CGA_WHOLE
from ..layers.mlp import Mlp
from ..structure import (
    COMPONENTS,
    Groups,
    Knob,
    Part,
    Structure,
    cat,
    component,
    depth_groups,
    each,
    kept_count,
    linear,
    rows,
    same_form,
    scale_rows,
    unowned,
)
from .model import VisionTransformer


def split(config: Any) -> int:
    """The per-head width a None ``qk_dim``/``v_dim`` stands for: embed_dim // num_heads."""
    return config.embed_dim // config.num_heads


def heads_free_capacity(config: Any) -> bool:
    """Whether fewer heads shrink a ViT's attention: not when every per-head width is
    embed_dim // heads (qk_dim None, and v_dim None or cascaded group attention, whose value
    width is the split), where each head just gets wider."""
    return (any(v is not None for v in config.per_segment("qk_dim"))
            or (config.attn == "mhsa" and any(v is not None for v in config.per_segment("v_dim"))))


def exact_ratio(dim: int, hidden: int) -> float:
    """A float r with ``int(dim * r) == hidden`` (the FFN's width rule): hidden / dim, or
    the next float up or down where rounding of hidden / dim would miss by one."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    while int(dim * ratio) > hidden:
        ratio = math.nextafter(ratio, -math.inf)
    return ratio


class ViTStructure(Structure):
    models = (VisionTransformer,)
    components = COMPONENTS
    guidance = (Knob("qk", "qk_dim", none_means=split), Knob("v", "v_dim", none_means=split),
                Knob("ffn", "mlp_ratio"), Knob("heads", "num_heads", applies=heads_free_capacity),
                Knob("depth", "depth", 0))

    @classmethod
    def groups(cls, model: nn.Module) -> dict[str, Groups]:
        """Every ViT in ``model``: the ViTs nested in it first (their names prefixed with
        their module path), then its own blocks."""
        nested = [(f"{name}.", vit) for name, vit in model.named_modules()
                  if name and isinstance(vit, VisionTransformer)]
        layout: dict[str, Groups] = {}
        for prefix, vit in (*nested, ("", model)):
            layout.update(_blocks(model, prefix, vit))
        if not nested and all(isinstance(b.attn, MultiHeadAttention) for b in model.blocks):
            layout["residual.width"] = _residual(model)
        return layout

    def unprunable(self) -> dict[str, str]:
        whole = dict(CGA_WHOLE) if self.config.attn != "mhsa" else {}
        policy = self.config.policy()
        if policy is not None:
            whole["width"] = (f"the {policy.name} policy's own parts read the residual stream "
                              "(cut the static parent instead, then add the policy)")
        if policy is not None and policy.unprunable is not None:
            whole.update(policy.unprunable(self.config))
        return whole

    def answers(self, output: Any) -> list[torch.Tensor]:
        policy = self.config.policy()
        if policy is not None and policy.answers is not None:
            return policy.answers(output)
        return super().answers(output)

    def pruned(self, ratios: Mapping[str, float]) -> Config:
        config = self.config
        heads = kept_count(config.num_heads, ratios.get("heads", 1.0))
        width = kept_count(config.embed_dim, ratios.get("width", 1.0))
        explicit = heads != config.num_heads or width != config.embed_dim  # None re-splits
        changes: dict[str, Any] = {"num_heads": heads, "embed_dim": width}
        for name, comp in (("qk_dim", "qk"), ("v_dim", "v")):
            given = config.per_segment(name)
            if name == "v_dim" and config.attn != "mhsa":
                continue  # the split, always
            new = tuple(kept_count(v or split(config), ratios.get(comp, 1.0)) for v in given)
            if not explicit:  # an unchanged width keeps its spelling (None)
                new = tuple(n if n != (v or split(config)) else v for n, v in zip(
                    new, given, strict=True))
            changes[name] = same_form(getattr(config, name), new)
        ratios_ffn = []
        for ratio in config.per_segment("mlp_ratio"):
            hidden = int(config.embed_dim * ratio)
            new_hidden = kept_count(hidden, ratios.get("ffn", 1.0))
            ratios_ffn.append(ratio if new_hidden == hidden and width == config.embed_dim
                              else exact_ratio(width, new_hidden))
        changes["mlp_ratio"] = same_form(config.mlp_ratio, tuple(ratios_ffn))
        depth = kept_count(config.depth, ratios.get("depth", 1.0))
        if depth != config.depth:
            changes["depth"] = depth
        return config.replace(**changes)

    def explicit(self) -> Config:
        """qk_dim and v_dim as numbers (v_dim stays None for cascaded group attention, whose
        value width is always the split)."""
        config = self.config
        qk = tuple(v or split(config) for v in config.per_segment("qk_dim"))
        v = tuple(w or split(config) for w in config.per_segment("v_dim"))
        return config.replace(qk_dim=same_form(config.qk_dim, qk),
                              v_dim=same_form(config.v_dim, v) if config.attn == "mhsa"
                              else config.v_dim)

    def kept(self, new: Config, name: str, group: Groups,
             state: Mapping[str, torch.Tensor]) -> int:
        comp = component(name)
        if comp == "depth":
            return new.depth
        if comp == "width":
            return new.embed_dim
        widths = new.block(block_of(name))
        if comp == "ffn":  # the new FFN's width rule
            return int(new.embed_dim * widths["mlp_ratio"])
        return {"heads": new.num_heads if new.attn == "mhsa" else group.size,
                "qk": widths["qk_dim"] or split(new), "v": widths["v_dim"] or split(new)}[comp]

    def rescale(self, state: dict[str, torch.Tensor], model: nn.Module, new: Config,
                rename: Callable[[str], str | None]) -> None:
        for name, module in model.named_modules():
            if not isinstance(module, (MultiHeadAttention, TokenCGA)):
                continue
            place = rename(name)
            if place is None:
                continue  # a dropped block
            width = new.block(block_of(place))["qk_dim"] or split(new)
            if isinstance(module, MultiHeadAttention):
                scale_rows(state, linear(f"{name}.qkv"), module.num_heads * module.qk_dim,
                           module.qk_dim, width)
            else:
                keys = [k for i in range(module.num_heads) for k in linear(f"{name}.qkvs.{i}")]
                scale_rows(state, keys, module.qk_dim, module.qk_dim, width)


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")


def block_of(name: str) -> int:
    """The block index in a group or module name (its last ``blocks.{b}``)."""
    return int(_BLOCK.findall(name)[-1])


def _blocks(root: nn.Module, prefix: str, vit: VisionTransformer) -> dict[str, Groups]:
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
    layout[f"{prefix}blocks.depth"] = depth_groups(root, f"{prefix}blocks", len(vit.blocks))
    return layout


def _mhsa(p: str, attn: MultiHeadAttention) -> dict[str, Groups]:
    """qkv rows are [q of every head | k of every head | v of every head]."""
    h, qk, v = attn.num_heads, attn.qk_dim, attn.v_dim
    qkv, proj = linear(f"{p}.qkv"), f"{p}.proj.weight"
    heads = cat(each(h, qk), each(h, qk), each(h, v))
    qk_ids = cat(torch.arange(h * qk), torch.arange(h * qk), unowned(h * v))
    v_ids = cat(unowned(2 * h * qk), torch.arange(h * v))
    return {
        f"{p}.heads": Groups(h, (*rows(qkv, heads), Part(proj, 1, each(h, v)))),
        f"{p}.qk": Groups(h * qk, tuple(rows(qkv, qk_ids)), heads=h),
        f"{p}.v": Groups(h * v, (*rows(qkv, v_ids), Part(proj, 1, torch.arange(h * v))), h),
    }


def _token_cga(p: str, attn: TokenCGA) -> dict[str, Groups]:
    """Head i owns ``qkvs.{i}`` (rows [q | k | v]) and its columns of ``proj``."""
    h, qk, v = attn.num_heads, attn.qk_dim, attn.split
    heads, qks, vs = [], [], []
    for i in range(h):
        keys = linear(f"{p}.qkvs.{i}")
        heads += rows(keys, torch.full((2 * qk + v,), i))
        own = i * qk + torch.arange(qk)
        qks += rows(keys, cat(own, own, unowned(v)))
        vs += rows(keys, cat(unowned(2 * qk), i * v + torch.arange(v)))
    proj = f"{p}.proj.weight"
    return {
        f"{p}.heads": Groups(h, (*heads, Part(proj, 1, each(h, v)))),
        f"{p}.qk": Groups(h * qk, tuple(qks), heads=h),
        f"{p}.v": Groups(h * v, (*vs, Part(proj, 1, torch.arange(h * v))), heads=h),
    }


def _residual(vit: VisionTransformer) -> Groups:
    """Residual channel c: everything that writes it (the patch embedding, the class and
    position tokens, every attention output and FFN output) and everything that reads it
    (every LayerNorm, the Q/K/V and FFN inputs, the head)."""
    n = vit.patch_embed.proj.out_channels
    ids = torch.arange(n)
    out = ["patch_embed.proj", "norm"]  # written or normalised: rows
    into = ["head.weight"]  # read: columns
    for b, block in enumerate(vit.blocks):
        p = f"blocks.{b}"
        for j in range(len(block.pre_ffns)):
            out += [f"{p}.pre_ffns.{j}.norm", f"{p}.pre_ffns.{j}.mlp.fc2"]
            into.append(f"{p}.pre_ffns.{j}.mlp.fc1.weight")
        out += [f"{p}.norm1", f"{p}.attn.proj", f"{p}.norm2", f"{p}.mlp.fc2"]
        into += [f"{p}.attn.qkv.weight", f"{p}.mlp.fc1.weight"]
    parts = [Part(key, 0, ids) for prefix in out for key in linear(prefix)]
    parts += [Part(key, 1, ids) for key in into]
    parts += [Part("cls_token", 2, ids), Part("pos_embed", 2, ids)]
    return Groups(n, tuple(parts))


def _mlp(p: str, mlp: Mlp) -> Groups:
    """Hidden channel c: row c of fc1 (and of the Linears a cascade adds to fc1's output:
    ``mlp.hidden_inputs``) and column c of fc2."""
    n = mlp.fc1.out_features
    ids = torch.arange(n)
    extra = [Part(f"{p}.{name}.weight", 0, ids) for name in getattr(mlp, "hidden_inputs", ())]
    return Groups(n, (*rows(linear(f"{p}.fc1"), ids), *extra, Part(f"{p}.fc2.weight", 1, ids)))

