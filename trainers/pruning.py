"""Structured pruning by Taylor importance into physically smaller models of the same family.

``prune(config, model, scores, keep)`` returns a new, valid config of the same family and the
sliced state dict that ``search_spaces.get(kind).build(new_config, ...)`` loads with
``strict=True``: real narrower matrices, fewer heads and blocks, not masks. ``nas prune``
writes the result as an export folder (config.json + safetensors + probe, no pickle).

How many, and which: the family says (its ``Structure``, search_spaces/structure.py). Its
``pruned(ratios)`` gives the config of the kept shares (a config has one width per field, so a
kept COUNT is uniform over what its field covers), ``kept`` how many groups of each name that
config keeps; WHICH heads/channels/blocks are kept is chosen here, per group name (per head
for Q/K and V) by that name's own scores: the top ones. What cannot be pruned
(``Structure.unprunable``: the layer's wiring, or what an adaptive part needs whole) is an
error to ask for.

Pruning is exactly masking: the pruned model computes what the original computes with the
dropped structures zeroed. Attention scales by 1/sqrt(qk width), which shrinks with the Q/K
width, so the family rescales the kept queries (``Structure.rescale``) to keep the logits
q.k/sqrt(d) of the kept channels. A dropped block of these residual networks is the identity
(for a model that stops tokens early at a forced last block, depth pruning is not exactly
masking).

The residual stream's width (``width``, the ViT's ``embed_dim``) is ranked by each channel's
importance summed over every layer that writes or reads it, and sliced through the patch
embedding, class and position tokens, every norm and projection, and the head. Slicing it
is masking but for LayerNorm: a LayerNorm of the cut model normalises over the kept
channels, where the masked original's would count the zeroed ones too; the cut model is
exactly the masked original with every LayerNorm's statistics taken over the kept channels
(tests/trainers/test_inherit.py). EfficientViT's stage widths are not cut (cascaded group
attention splits the residual stream into one chunk per head).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import search_spaces
from search_spaces.config import Config
from search_spaces.output import ModelOutput
from search_spaces.structure import COMPONENTS, Groups, Structure, component

from .budget import full_macs
from .data import Data
from .groups import group_layout
from .loop import FitResult, FitSettings, fit


@dataclasses.dataclass(frozen=True)
class Pruned:
    """A pruned architecture: ``config``, the ``state_dict`` its model loads (strict), the
    kept group ids per score name (sorted), the keep ratio per component (the one asked
    for, :func:`prune`; or the share kept, :func:`slice_to`), and the MACs of one sample
    when they were counted (``prune_to_macs``)."""

    config: Config
    state_dict: dict[str, torch.Tensor]
    kept: dict[str, torch.Tensor]
    keep: dict[str, float]
    macs: int | None = None


def _structure(config: Config) -> Structure:
    return search_spaces.get(config.KIND).structure(config)


def prunable(config: Config) -> tuple[str, ...]:
    """The components that can be pruned in this config's models (``Structure.prunable``:
    the family's, less what the layers' wiring or an adaptive part needs whole)."""
    return _structure(config).prunable()


def keep_ratios(config: Config, keep: float | Mapping[str, float]) -> dict[str, float]:
    """Keep ratio per component. A single float applies to the prunable channel widths (qk,
    v, ffn), so it is the share of every width kept; heads, depth and the residual width
    are pruned only when named (fewer heads of fewer channels each would keep keep**2 of the
    attention widths).
    A ratio < 1 for a component that cannot be pruned here is an error; 1 is ignored."""
    allowed = prunable(config)
    if isinstance(keep, (int, float)) and not isinstance(keep, bool):
        ratios = {c: float(keep) for c in allowed if c not in ("depth", "heads", "width")}
    else:
        unknown = sorted(set(keep) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"`keep`: unknown component(s) {unknown}; known: {COMPONENTS}")
        for comp, ratio in keep.items():
            if comp not in allowed and ratio != 1:
                why = _structure(config).unprunable().get(
                    comp, f"the {config.KIND} family has no {comp} groups")
                raise ValueError(f"`keep[{comp!r}]`={ratio}: {comp} cannot be pruned in this "
                                 f"model ({why}); prunable: {list(allowed)}")
        ratios = {c: float(r) for c, r in keep.items() if c in allowed}
    for comp, ratio in ratios.items():
        if not 0 < ratio <= 1:
            raise ValueError(f"`keep[{comp!r}]`={ratio} must be in (0, 1]")
    return ratios


def pruned_config(config: Config, keep: float | Mapping[str, float]) -> Config:
    """The config of the pruned model; the same config when nothing shrinks."""
    return _structure(config).pruned(keep_ratios(config, keep))


# -------------------------------------------------------------------------------- slicing
def _select(scores: torch.Tensor, group: Groups, count: int) -> torch.Tensor:
    """Ids of the ``count`` best groups (of each head, for head-major groups), sorted."""
    per_head = scores.detach().cpu().reshape(group.heads, -1)
    top = per_head.topk(count, dim=1).indices.sort(dim=1).values
    return (top + per_head.shape[1] * torch.arange(group.heads)[:, None]).flatten()


def _slice(state: dict[str, torch.Tensor], groups: Mapping[str, Groups],
           kept: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep a slice of a tensor iff every group it belongs to is kept (blocks are dropped by
    renaming: :func:`renamer`)."""
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


def renamer(kept: Mapping[str, torch.Tensor]) -> Callable[[str], str | None]:
    """For the kept blocks of each depth name (``blocks.depth`` -> ``blocks.{b}``), the name
    a state key, group or module of the original has in the cut model: its block renumbered
    (the kept ones in order), None inside a dropped block; other names unchanged."""
    renames = []
    for name, ids in kept.items():
        container = name.removesuffix("depth")
        renames.append((re.compile(rf"^{re.escape(container)}(\d+)\.(.*)$"), container,
                        {int(old): new for new, old in enumerate(ids.tolist())}))

    def rename(key: str) -> str | None:
        for pattern, container, index in renames:
            match = pattern.match(key)
            if match:
                old = int(match.group(1))
                return f"{container}{index[old]}.{match.group(2)}" if old in index else None
        return key

    return rename


def prune(config: Config, model: nn.Module, scores: Mapping[str, torch.Tensor],
          keep: float | Mapping[str, float]) -> Pruned:
    """Prune ``model`` (built from ``config``, with its weights) by ``scores`` (Taylor scores
    of this model: trainers.importance) to keep ratios ``keep`` (see :func:`keep_ratios`)."""
    ratios = keep_ratios(config, keep)
    return dataclasses.replace(slice_to(config, model, scores, pruned_config(config, ratios)),
                               keep=ratios)


def slice_to(config: Config, model: nn.Module, scores: Mapping[str, torch.Tensor],
             new: Config) -> Pruned:
    """Cut ``model`` (built from ``config``, with its weights) to a model of ``new``: of each
    group name, the ``Structure.kept`` count of ``new`` with the best ``scores``, the rest
    sliced away. ``Pruned.keep`` is then the kept share of each component (groups kept over
    groups, all names of the component together). ValueError if ``new`` keeps more groups
    of a name than ``model`` has; whether every tensor then fits ``new``'s model is the
    caller's to check (trainers/inherit.py: :func:`~trainers.inherit.misfit`)."""
    groups = group_layout(model)
    for name, group in groups.items():
        if name not in scores or scores[name].numel() != group.size:
            got = tuple(scores[name].shape) if name in scores else "nothing"
            raise ValueError(f"scores[{name!r}]: expected {group.size} values, got {got}; "
                             "were the scores computed on this model?")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    structure = _structure(config)
    blocks = {name: structure.kept(new, name, g, state) for name, g in groups.items()
              if component(name) == "depth"}
    depth = {name: _select(scores[name], groups[name], n) for name, n in blocks.items()
             if 1 <= n <= groups[name].size}  # too many or none: told below
    rename = renamer(depth)  # blocks first: a kept block's widths are those of its new place
    counts = {name: (structure.kept(new, rename(name), g, state) if rename(name) is not None
                     else g.size // g.heads) for name, g in groups.items()}
    for name, group in groups.items():
        if not 1 <= counts[name] <= group.size // group.heads:
            per = " per head" if group.heads > 1 else ""
            raise ValueError(f"{name}: {new.KIND} config keeps {counts[name]}{per}; the model "
                             f"has {group.size // group.heads}{per}")
    kept = {name: depth[name] if name in depth else _select(scores[name], g, counts[name])
            for name, g in groups.items()}
    structure.rescale(state, model, new, rename)
    state = _slice(state, groups, kept)
    state = {rename(key): tensor for key, tensor in state.items() if rename(key) is not None}
    within = {n: g for n, g in groups.items() if rename(n) is not None}  # kept blocks
    return Pruned(config=new, state_dict=state, kept=kept, keep=kept_shares(within, kept))


def kept_shares(groups: Mapping[str, Groups],
                kept: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Groups kept over groups, per component (every name of the component together; the
    caller leaves out the groups of dropped blocks)."""
    totals: dict[str, list[int]] = {}
    for name, group in groups.items():
        pair = totals.setdefault(component(name), [0, 0])
        pair[0] += len(kept[name])
        pair[1] += group.size
    return {comp: kept_n / size for comp, (kept_n, size) in totals.items() if size}


# ------------------------------------------------------------------------ budget, build, IO
_MACS: dict[tuple[str, tuple[int, ...], int], int] = {}


class TargetTooSmall(ValueError):
    """A MACs target below what pruning every group to one channel leaves."""


def macs_of(config: Config, *, input_shape: Sequence[int], num_classes: int) -> int:
    """MACs of one sample of a freshly built model of ``config``; cached per structure, as
    tracing costs ~0.1-1 s. An adaptive config counts in full (nothing skipped: what it runs
    depends on its data, and the full cost bounds it)."""
    key = (_structure(config).build_key(), tuple(input_shape), num_classes)
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
