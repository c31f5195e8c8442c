"""Structured pruning by Taylor importance into physically smaller models of the same family.

``prune(config, model, scores, keep)`` returns a new, valid config of the same family and the
sliced state dict that ``search_spaces.get(kind).build(new_config, ...)`` loads with
``strict=True``: real narrower matrices, fewer heads and blocks, not masks. ``nas prune``
writes the result as an export folder (config.json + safetensors + probe, no pickle).

How many, and which:
- A config has one width per field (ViTConfig: one ``num_heads``, ``qk_dim``, ``v_dim``,
  ``mlp_ratio`` and ``depth`` for all blocks; EfficientViTConfig: one ``key_dim`` and
  ``ffn_ratio`` for all stages, ``depths`` per stage). So the kept COUNT of a component is
  uniform over what its field covers: ``round(keep * count)`` (at least 1) for every block of
  a ViT; for every block of every stage for EfficientViT's Q/K channels; per stage for its
  depths; and ``round(width * keep * ffn_ratio)`` for every EfficientViT FFN (the ratio is
  global, so the count follows each FFN's width). WHICH heads/channels/blocks are kept is
  chosen per block (per head for Q/K and V) by that block's own scores: the top ones.
- A ViT's FFN width is ``int(embed_dim * mlp_ratio)``; the new ``mlp_ratio`` is chosen (up to
  the next float) so that this is exactly the kept count.

What can be pruned (``prunable``):
- ViT with MHSA: heads, Q/K channels, V channels, FFN channels, blocks. The config then gives
  ``qk_dim`` and ``v_dim`` explicitly, and ``num_heads`` need not divide ``embed_dim``.
- Cascaded group attention (ViT ``attn="cga"`` and every EfficientViT): Q/K channels, FFN
  channels and blocks. Not heads: head i reads input chunk i of ``dim / heads`` channels, so
  another head count re-splits the input rather than dropping a slice. Not V: head i's output
  is added to head i+1's input chunk channel by channel, and those channels are the residual
  stream's (not prunable); a V channel c can only go where chunk channel c goes. Their scores
  are still computed (for analysis); the attention biases stay per head and are kept whole.
- A multi-stage ViT (earlier stages nested in the last, trainers/groups.py): every stage is
  pruned to the same counts (one config), each by its own scores; a reuse Linear feeding an
  FFN loses the rows of its dropped hidden channels. What the adaptive part needs whole
  (``Adaptive.unprunable``, e.g. heads and depth under attention-logit reuse) is not pruned.

Pruning is exactly masking: the pruned model computes what the original computes with the
dropped structures zeroed. Attention scales by 1/sqrt(qk width), which shrinks with the Q/K
width, so the kept query rows (EfficientViT: the query's depthwise BN, whose affine output is
linear in its weight and bias) are multiplied by sqrt(new / old) to keep the logits q.k/sqrt(d)
of the kept channels. A dropped block of these residual networks is the identity (for an
model that stops tokens early at a forced last block, depth pruning is not exactly masking).

Not pruned: the residual-stream width (embed dims, depthwise convs, norms) and PatchMerging's
fixed 4x hidden width, which no config field expresses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import search_spaces
from search_spaces.config import Config
from search_spaces.efficientvit import EfficientViTConfig, ffn_hidden
from search_spaces.layers.attention import MultiHeadAttention
from search_spaces.layers.attention import TokenGroupAttention as TokenCGA
from search_spaces.layers.cga import GroupAttention as WindowCGA
from search_spaces.output import ModelOutput
from search_spaces.vit import ViTConfig

from .budget import full_macs
from .data import Data
from .groups import Groups, component, group_layout
from .importance import COMPONENTS
from .loop import FitResult, FitSettings, fit

_NOT_PRUNABLE = {
    "heads": "cascaded group attention reads one input chunk per head",
    "v": "cascaded group attention adds each head's V output to the next head's input",
}


@dataclasses.dataclass(frozen=True)
class Pruned:
    """A pruned architecture: ``config``, the ``state_dict`` its model loads (strict), the
    kept group ids per score name (sorted), the keep ratio per component that was applied,
    and the MACs of one sample when they were counted (``prune_to_macs``)."""

    config: Config
    state_dict: dict[str, torch.Tensor]
    kept: dict[str, torch.Tensor]
    keep: dict[str, float]
    macs: int | None = None


def prunable(config: Config) -> tuple[str, ...]:
    """The components that can be pruned in this config's models (see the module docstring),
    less those its adaptive part needs whole (``Adaptive.unprunable``)."""
    if isinstance(config, ViTConfig):
        base = COMPONENTS if config.attn == "mhsa" else ("qk", "ffn", "depth")
    elif isinstance(config, EfficientViTConfig):
        base = ("qk", "ffn", "depth")
    else:
        raise TypeError(f"pruning knows no {type(config).__name__}")
    return tuple(c for c in base if c not in _adaptive_whole(config))


def _adaptive_whole(config: Config) -> dict[str, str]:
    adaptive = search_spaces.get(config.KIND).adaptive(config)
    return adaptive.unprunable() if adaptive is not None else {}


def keep_ratios(config: Config, keep: float | Mapping[str, float]) -> dict[str, float]:
    """Keep ratio per component. A single float applies to the prunable channel widths (qk,
    v, ffn), so it is the share of every width kept; heads and depth are pruned only when
    named (fewer heads of fewer channels each would keep keep**2 of the attention widths).
    A ratio < 1 for a component that cannot be pruned here is an error; 1 is ignored."""
    allowed = prunable(config)
    if isinstance(keep, (int, float)) and not isinstance(keep, bool):
        ratios = {c: float(keep) for c in allowed if c not in ("depth", "heads")}
    else:
        unknown = sorted(set(keep) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"`keep`: unknown component(s) {unknown}; known: {COMPONENTS}")
        for comp, ratio in keep.items():
            if comp not in allowed and ratio != 1:
                why = _adaptive_whole(config).get(comp) or _NOT_PRUNABLE[comp]
                raise ValueError(f"`keep[{comp!r}]`={ratio}: {comp} cannot be pruned in this "
                                 f"model ({why}); prunable: {list(allowed)}")
        ratios = {c: float(r) for c, r in keep.items() if c in allowed}
    for comp, ratio in ratios.items():
        if not 0 < ratio <= 1:
            raise ValueError(f"`keep[{comp!r}]`={ratio} must be in (0, 1]")
    return ratios


def _count(n: int, ratio: float) -> int:
    return max(1, round(ratio * n))


def exact_ratio(dim: int, hidden: int) -> float:
    """A float r with ``int(dim * r) == hidden`` (the ViT FFN's width rule): hidden / dim, or
    the next float up or down where rounding of hidden / dim would miss by one."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    while int(dim * ratio) > hidden:
        ratio = math.nextafter(ratio, -math.inf)
    return ratio


def pruned_config(config: Config, keep: float | Mapping[str, float]) -> Config:
    """The config of the pruned model; the same config when nothing shrinks."""
    ratios = keep_ratios(config, keep)
    if isinstance(config, ViTConfig):
        return _vit_config(config, ratios)
    assert isinstance(config, EfficientViTConfig)
    changes: dict[str, Any] = {}
    key_dim = _count(config.key_dim, ratios.get("qk", 1.0))
    if key_dim != config.key_dim:
        changes["key_dim"] = key_dim
    if ratios.get("ffn", 1.0) != 1.0:  # round(w * r) >= 1 for every width w
        ratio = max(config.ffn_ratio * ratios["ffn"], 1 / min(config.embed_dims))
        changes["ffn_ratio"] = _short_ratio(ratio, config.embed_dims)
    depths = tuple(_count(d, ratios.get("depth", 1.0)) for d in config.depths)
    if depths != config.depths:
        changes["depths"] = depths
    return config.replace(**changes)


def _short_ratio(ratio: float, widths: Sequence[int]) -> float:
    """The ratio with the fewest decimals that gives the same FFN widths as ``ratio``."""
    for digits in range(1, 8):
        short = round(ratio, digits)
        if short > 0 and all(ffn_hidden(w, short) == ffn_hidden(w, ratio) for w in widths):
            return short
    return ratio


def _vit_config(config: ViTConfig, ratios: Mapping[str, float]) -> ViTConfig:
    split = config.embed_dim // config.num_heads
    qk, v = config.qk_dim or split, config.v_dim or split
    heads = _count(config.num_heads, ratios.get("heads", 1.0))
    new_qk, new_v = _count(qk, ratios.get("qk", 1.0)), _count(v, ratios.get("v", 1.0))
    changes: dict[str, Any] = {}
    if heads != config.num_heads:  # None would mean embed_dim // heads: give widths explicitly
        changes.update(num_heads=heads, qk_dim=new_qk, v_dim=new_v)
    else:  # an unchanged width keeps its spelling (None stays None)
        changes.update(qk_dim=new_qk if new_qk != qk else config.qk_dim,
                       v_dim=new_v if new_v != v else config.v_dim)
    hidden = int(config.embed_dim * config.mlp_ratio)
    new_hidden = _count(hidden, ratios.get("ffn", 1.0))
    if new_hidden != hidden:
        changes["mlp_ratio"] = exact_ratio(config.embed_dim, new_hidden)
    depth = _count(config.depth, ratios.get("depth", 1.0))
    if depth != config.depth:
        changes["depth"] = depth
    return config.replace(**changes)


# -------------------------------------------------------------------------------- slicing
def _target(new: Config, name: str, group: Groups, state: Mapping[str, torch.Tensor]) -> int:
    """How many groups of ``name`` the new config keeps (per head for head-major groups)."""
    comp, per_head = component(name), group.size // group.heads
    if comp == "ffn":  # the FFN's input width: fc1 / pw1's weight is (hidden, width, ...)
        width = state[group.parts[0].key].shape[1]
        return (int(width * new.mlp_ratio) if isinstance(new, ViTConfig)
                else ffn_hidden(width, new.ffn_ratio))
    if isinstance(new, ViTConfig):
        return {"heads": new.num_heads if new.attn == "mhsa" else group.size,
                "qk": _qk_width(new), "v": new.v_dim or new.embed_dim // new.num_heads,
                "depth": new.depth}[comp]
    assert isinstance(new, EfficientViTConfig)
    if comp == "depth":
        return new.depths[int(name.split(".")[1])]
    return {"heads": group.size, "qk": new.key_dim, "v": per_head}[comp]


def _qk_width(config: Config) -> int:
    """Q/K channels per head of every attention of ``config``'s models."""
    if isinstance(config, EfficientViTConfig):
        return config.key_dim
    assert isinstance(config, ViTConfig)
    return config.qk_dim or config.embed_dim // config.num_heads


def _select(scores: torch.Tensor, group: Groups, count: int) -> torch.Tensor:
    """Ids of the ``count`` best groups (of each head, for head-major groups), sorted."""
    per_head = scores.detach().cpu().reshape(group.heads, -1)
    top = per_head.topk(count, dim=1).indices.sort(dim=1).values
    return (top + per_head.shape[1] * torch.arange(group.heads)[:, None]).flatten()


def _slice(state: dict[str, torch.Tensor], groups: Mapping[str, Groups],
           kept: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep a slice of a tensor iff every group it belongs to is kept (blocks: _drop_blocks)."""
    masks: dict[str, dict[int, torch.Tensor]] = {}
    for name, group in groups.items():
        if component(name) == "depth":
            continue
        keep = torch.zeros(group.size, dtype=torch.bool)
        keep[kept[name]] = True
        for part in group.parts:
            ok = (part.ids < 0) | keep[part.ids.clamp(min=0)]
            axes = masks.setdefault(part.key, {})
            axes[part.axis] = ok if part.axis not in axes else axes[part.axis] & ok
    out = dict(state)
    for key, axes in masks.items():
        tensor = state[key]
        for axis, ok in axes.items():
            tensor = tensor.index_select(axis, ok.nonzero().flatten().to(tensor.device))
        out[key] = tensor.contiguous()
    return out


def _drop_blocks(state: dict[str, torch.Tensor],
                 kept: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the blocks not kept and renumber the rest (``blocks.depth`` -> ``blocks.{b}``)."""
    renames = []
    for name, ids in kept.items():
        container = name.removesuffix("depth")
        renames.append((re.compile(rf"^{re.escape(container)}(\d+)\.(.*)$"), container,
                        {int(old): new for new, old in enumerate(ids.tolist())}))
    out = {}
    for key, tensor in state.items():
        for pattern, container, index in renames:
            match = pattern.match(key)
            if match:
                old = int(match.group(1))
                key = f"{container}{index[old]}.{match.group(2)}" if old in index else ""
                break
        if key:
            out[key] = tensor
    return out


def _rescale_queries(state: dict[str, torch.Tensor], model: nn.Module, new_qk: int) -> None:
    """Multiply every attention's query output by sqrt(new_qk / old): see the docstring."""
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            old, keys = module.qk_dim, [f"{name}.qkv.weight", f"{name}.qkv.bias"]
            rows = module.num_heads * old
        elif isinstance(module, TokenCGA):
            old, rows = module.qk_dim, module.qk_dim
            keys = [f"{name}.qkvs.{i}.{p}" for i in range(module.num_heads)
                    for p in ("weight", "bias")]
        elif isinstance(module, WindowCGA):
            old, rows = module.key_dim, module.key_dim
            keys = [f"{name}.dws.{i}.bn.{p}" for i in range(module.num_heads)
                    for p in ("weight", "bias")]
        else:
            continue
        if new_qk != old:
            for key in keys:
                state[key][:rows] *= math.sqrt(new_qk / old)


def prune(config: Config, model: nn.Module, scores: Mapping[str, torch.Tensor],
          keep: float | Mapping[str, float]) -> Pruned:
    """Prune ``model`` (built from ``config``, with its weights) by ``scores`` (Taylor scores
    of this model: trainers.importance) to keep ratios ``keep`` (see :func:`keep_ratios`)."""
    ratios = keep_ratios(config, keep)
    new = pruned_config(config, ratios)
    groups = group_layout(model)
    for name, group in groups.items():
        if name not in scores or scores[name].numel() != group.size:
            got = tuple(scores[name].shape) if name in scores else "nothing"
            raise ValueError(f"scores[{name!r}]: expected {group.size} values, got {got}; "
                             "were the scores computed on this model?")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kept = {name: _select(scores[name], g, _target(new, name, g, state))
            for name, g in groups.items()}
    _rescale_queries(state, model, _qk_width(new))
    state = _slice(state, groups, kept)
    state = _drop_blocks(state, {n: ids for n, ids in kept.items() if component(n) == "depth"})
    return Pruned(config=new, state_dict=state, kept=kept, keep=ratios)


# ------------------------------------------------------------------------ budget, build, IO
_MACS: dict[tuple[str, tuple[int, ...], int], int] = {}


def _structure(config: Config) -> str:
    """One key for configs that build the same modules: EfficientViT's ffn_ratio counts only
    through the FFN widths it gives (a bisection visits many ratios of one structure)."""
    data = config.to_dict()
    if isinstance(config, EfficientViTConfig):
        data["ffn_ratio"] = [ffn_hidden(w, config.ffn_ratio) for w in config.embed_dims]
    return f"{config.KIND}:{json.dumps(data, sort_keys=True)}"


class TargetTooSmall(ValueError):
    """A MACs target below what pruning every group to one channel leaves."""


def macs_of(config: Config, *, input_shape: Sequence[int], num_classes: int) -> int:
    """MACs of one sample of a freshly built model of ``config``; cached per structure, as
    tracing costs ~0.1-1 s. An adaptive config counts in full (nothing skipped: what it runs
    depends on its data, and the full cost bounds it)."""
    key = (_structure(config), tuple(input_shape), num_classes)
    if key not in _MACS:
        model = search_spaces.get(config.KIND).build(config, num_classes=num_classes,
                                                     in_chans=input_shape[0])
        if len(_MACS) >= 1024:
            _MACS.clear()
        _MACS[key] = round(full_macs(config.KIND, config, model, input_shape))
    return _MACS[key]


def prune_to_macs(config: Config, model: nn.Module, scores: Mapping[str, torch.Tensor], *,
                  input_shape: Sequence[int], num_classes: int, target_macs: int | None = None,
                  fraction: float | None = None, components: Sequence[str] | None = None,
                  steps: int = 16) -> Pruned:
    """Prune with the largest uniform keep ratio (bisection to 2**-steps) over ``components``
    (default: the prunable width components) whose config has at most ``target_macs`` MACs,
    or ``fraction`` of the original's. ``Pruned.macs`` is the pruned config's count."""
    original = macs_of(config, input_shape=input_shape, num_classes=num_classes)
    if (target_macs is None) == (fraction is None):
        raise ValueError("give exactly one of `target_macs` and `fraction`")
    target = target_macs if target_macs is not None else fraction * original
    comps = list(components or [c for c in prunable(config) if c != "depth"])

    def fits(ratio: float) -> bool:
        pruned = pruned_config(config, {c: ratio for c in comps})
        return macs_of(pruned, input_shape=input_shape, num_classes=num_classes) <= target

    lo, hi = 1e-6, 1.0
    if fits(hi):
        lo = hi
    elif not fits(lo):
        smallest = macs_of(pruned_config(config, {c: lo for c in comps}),
                           input_shape=input_shape, num_classes=num_classes)
        raise TargetTooSmall(f"target of {target:.0f} MACs is below the {smallest} MACs left "
                         f"when pruning {comps} to one channel each")
    for _ in range(steps if lo < hi else 0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    pruned = prune(config, model, scores, {c: lo for c in comps})
    macs = macs_of(pruned.config, input_shape=input_shape, num_classes=num_classes)
    return dataclasses.replace(pruned, macs=macs)


def build_pruned(pruned: Pruned, *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """The pruned model: built from ``pruned.config``, weights loaded with strict=True."""
    model = search_spaces.get(pruned.config.KIND).build(
        pruned.config, num_classes=num_classes, in_chans=in_chans)
    model.load_state_dict(pruned.state_dict, strict=True)
    return model


def finetune(pruned: Pruned, data: Data, settings: FitSettings, *,
             report: Callable[[dict[str, Any]], bool | None] | None = None,
             loss_fn: Callable[[torch.Tensor | ModelOutput, torch.Tensor], torch.Tensor]
             | None = None) -> tuple[nn.Module, FitResult]:
    """Build the pruned model and train it ``settings.epochs`` more epochs with ``fit``."""
    model = build_pruned(pruned, num_classes=data.num_classes, in_chans=data.in_chans)
    return model, fit(model, data, settings, report=report, loss_fn=loss_fn)
