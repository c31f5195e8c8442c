"""The structure of an ``efficientvit`` config (search_spaces/structure.py).

Group names, in forward order: ``stages.{s}.downsample.res1.hidden`` and ``.res2.hidden``
(the FFNs around PatchMerging), ``stages.{s}.blocks.{b}.ffn{i}.hidden``,
``stages.{s}.blocks.{b}.attn.heads`` / ``.qk`` / ``.v`` and ``stages.{s}.blocks.depth``.
Q/K and V groups are head-major, as ViT's; a Q channel of the window attention also owns its
channel of the depthwise conv (and BN) that filters q.

A config has ``key_dim`` and ``ffn_ratio`` for all stages or one per stage, and ``depths``
per stage: pruning keeps its share of Q/K in every block of a stage, the depth count per
stage, and an FFN keeps ``round(width * keep * ffn_ratio)`` (its stage's ratio, so the count
follows each FFN's width; a stage's downsample FFNs take that stage's ratio). Heads stay
whole: the window attention is cascaded group attention (head i reads input chunk i; its
output is added to head i+1's input). A stage's width (``embed_dims``) can shrink where V is
as wide as a chunk (search_spaces/efficientvit/residual.py: the width groups, and why V then
follows the width); PatchMerging's 4x hidden width and the stem's widths follow it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..layers.cga import UNPRUNABLE as CGA_WHOLE
from ..layers.cga import GroupAttention as WindowCGA
from ..layers.conv import ConvFFN, merge_hidden
from ..structure import (
    Groups,
    Knob,
    Part,
    Structure,
    cat,
    component,
    depth_groups,
    each,
    kept_count,
    rows,
    same_form,
    scale_rows,
    unowned,
)
from .model import EfficientViT, ffn_hidden
from .residual import STEM_SHARE, convbn, cuttable, se_width, width_groups


class EfficientViTStructure(Structure):
    models = (EfficientViT,)
    components = ("qk", "ffn", "depth", "width")
    guidance = (Knob("qk", "key_dim"), Knob("v", "v_ratio"), Knob("ffn", "ffn_ratio"),
                *(Knob("heads", f"heads_{k}", k - 1) for k in range(1, 5)),
                *(Knob("depth", f"depth_{k}", k - 1) for k in range(1, 5)))

    @classmethod
    def groups(cls, model: nn.Module) -> dict[str, Groups]:
        layout: dict[str, Groups] = {}
        widths = cuttable(model)
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
                        layout.update(_window_cga(f"{p}.attn", f"{p}.mixer.m.attn",
                                                  child.m.attn, last_v=widths))
            layout[f"stages.{s}.blocks.depth"] = depth_groups(model, f"stages.{s}.blocks",
                                                              len(stage.blocks))
        return {**layout, **(width_groups(model) if widths else {})}

    def unprunable(self) -> dict[str, str]:
        whole = dict(CGA_WHOLE)
        if _v_is_chunk(self.config):  # V then follows the width (residual.py)
            whole.pop("width")
        else:
            whole["width"] = ("a V narrower than its chunk (v_ratio < 1) adds onto part of "
                              "the next head's chunk only")
        return whole

    def pruned(self, ratios: Mapping[str, float]) -> Config:
        config = self.config
        n = len(config.embed_dims)
        width = ratios.get("width", 1.0)
        if width != 1.0:  # every stage's width, a multiple of its heads (and 8: the stem)
            config = config.replace(embed_dims=tuple(
                _multiple(w * width, math.lcm(h, 8 if i == 0 else 1))
                for i, (w, h) in enumerate(zip(config.embed_dims, config.num_heads,
                                               strict=True))))
        key_dims = tuple(kept_count(kd, ratios.get("qk", 1.0))
                         for kd in config.per_stage("key_dim"))
        ffn = ratios.get("ffn", 1.0)
        ffn_ratios = config.per_stage("ffn_ratio") if ffn == 1.0 else tuple(
            # round(w * r) >= 1 for every width w the stage's FFNs have
            _short_ratio(max(r * ffn, 1 / min(_ffn_widths(config, i))), _ffn_widths(config, i))
            for i, r in enumerate(config.per_stage("ffn_ratio")))
        if not isinstance(config.ffn_ratio, tuple) and ffn != 1.0:  # one ratio for all stages
            widths = [w for i in range(n) for w in _ffn_widths(config, i)]
            ffn_ratios = (_short_ratio(max(config.ffn_ratio * ffn, 1 / min(widths)), widths),) * n
        changes: dict[str, Any] = {
            "key_dim": same_form(config.key_dim, key_dims),
            "ffn_ratio": same_form(config.ffn_ratio, ffn_ratios),
        }
        depths = tuple(kept_count(d, ratios.get("depth", 1.0)) for d in config.depths)
        if depths != config.depths:
            changes["depths"] = depths
        return config.replace(**changes)

    def kept(self, new: Config, name: str, group: Groups,
             state: Mapping[str, torch.Tensor]) -> int:
        comp, where = component(name), name.split(".")
        if where[0] == "patch_embed":  # the stem's inner widths
            return new.embed_dims[0] // STEM_SHARE[int(where[1][-1])]
        index = int(where[1])
        if index >= len(new.embed_dims):
            raise ValueError(f"{name}: the {new.KIND} config has {len(new.embed_dims)} stages")
        stage, before = new.stage(index), "downsample" in where and where[3] in (
            "res1", "merge", "se")  # at the previous stage's width
        width = new.embed_dims[index - 1 if before else index]
        if comp == "ffn":
            return ffn_hidden(width, stage["ffn_ratio"])
        if comp == "depth":
            return new.depths[index]
        if comp == "width":
            return {"merge": merge_hidden(width), "se": se_width(merge_hidden(width))}.get(
                where[3] if before else "", width // new.num_heads[index])
        v = new.value_dims()[index] if _v_is_chunk(new) else group.size // group.heads
        return {"heads": group.size, "qk": stage["key_dim"], "v": v}[comp]

    def rescale(self, state: dict[str, torch.Tensor], model: nn.Module, new: Config,
                rename: Callable[[str], str | None]) -> None:
        """The query's depthwise BN: its affine output is linear in its weight and bias."""
        for name, module in model.named_modules():
            if isinstance(module, WindowCGA) and rename(name) is not None:
                keys = [f"{name}.dws.{i}.bn.{p}" for i in range(module.num_heads)
                        for p in ("weight", "bias")]
                width = new.stage(int(name.split(".")[1]))["key_dim"]
                scale_rows(state, keys, module.key_dim, module.key_dim, width)

    def build_key(self) -> str:
        """ffn_ratio counts only through the FFN widths it gives (a bisection visits many
        ratios of one structure)."""
        data = self.config.to_dict()
        data["ffn_ratio"] = [[ffn_hidden(w, self.config.stage(i)["ffn_ratio"])
                              for w in _ffn_widths(self.config, i)]
                             for i in range(len(self.config.embed_dims))]
        return f"{self.config.KIND}:{json.dumps(data, sort_keys=True)}"


def _ffn_widths(config: Any, i: int) -> tuple[int, ...]:
    """The input widths of stage i's FFNs: its own, and the previous stage's (the FFN before
    its PatchMerging)."""
    return (config.embed_dims[i],) + ((config.embed_dims[i - 1],) if i else ())


def _short_ratio(ratio: float, widths: Sequence[int]) -> float:
    """The ratio with the fewest decimals that gives the same FFN widths as ``ratio``."""
    for digits in range(1, 8):
        short = round(ratio, digits)
        if short > 0 and all(ffn_hidden(w, short) == ffn_hidden(w, ratio) for w in widths):
            return short
    return ratio


def _v_is_chunk(config: Any) -> bool:
    return all(v * h == w for v, h, w in zip(config.value_dims(), config.num_heads,
                                             config.embed_dims, strict=True))


def _multiple(value: float, step: int) -> int:
    """``value`` rounded to a multiple of ``step``, at least ``step``."""
    return max(step, round(value / step) * step)


def _conv_ffn(p: str, ffn: ConvFFN) -> Groups:
    n = ffn.pw1.conv.out_channels
    ids = torch.arange(n)
    return Groups(n, (*rows(convbn(f"{p}.pw1"), ids), Part(f"{p}.pw2.conv.weight", 1, ids)))


def _window_cga(name: str, p: str, attn: WindowCGA, *, last_v: bool) -> dict[str, Groups]:
    """Head i owns ``qkvs.{i}`` (rows [q | k | v], conv + BN), ``dws.{i}`` (the depthwise
    filter of q: one channel per Q channel), its attention biases and its ``proj`` columns.
    ``last_v``: the V group is the last head's alone (the others' V is the width's:
    residual.py)."""
    h, kd, vd = attn.num_heads, attn.key_dim, attn.value_dim
    heads, qks, vs = [], [], []
    for i in range(h):
        qkv, dw = convbn(f"{p}.qkvs.{i}"), convbn(f"{p}.dws.{i}")
        heads += rows(qkv, torch.full((2 * kd + vd,), i)) + rows(dw, torch.full((kd,), i))
        own = i * kd + torch.arange(kd)
        qks += rows(qkv, cat(own, own, unowned(vd))) + rows(dw, own)
        if not last_v or i == h - 1:
            vs += rows(qkv, cat(unowned(2 * kd), (0 if last_v else i * vd) + torch.arange(vd)))
    proj = f"{p}.proj.1.conv.weight"
    heads += [Part(proj, 1, each(h, vd)), Part(f"{p}.attention_biases", 0, torch.arange(h))]
    v = Groups(vd, (*vs, Part(proj, 1, cat(unowned((h - 1) * vd), torch.arange(vd))))) \
        if last_v else Groups(h * vd, (*vs, Part(proj, 1, torch.arange(h * vd))), heads=h)
    return {
        f"{name}.heads": Groups(h, tuple(heads)),
        f"{name}.qk": Groups(h * kd, tuple(qks), heads=h),
        f"{name}.v": v,
    }
