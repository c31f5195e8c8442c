"""Inheritance: a candidate starts as its trained parent cut by the parent's Taylor importance.

The parent is an export folder (``nas export``: config.json + model.safetensors). A
candidate's *base* is the parent's config with the candidate's architecture dimensions
(``SearchSpace.architecture``: what trained weights fix; a token policy and its knobs are not
among them), so an adaptive candidate's base is static, like its parent. The parent is cut to
the base by ``trainers.pruning.slice_to``, one function for ``nas prune``, inherited trials and
supernet subnets: of every group name (search_spaces/structure.py) the base keeps its count,
the parent's best-scored groups, each kind of structure ranked within its kind (heads among
heads of one block, Q/K channels within their head, blocks among blocks); dropped blocks are
the least important. The candidate then takes the cut weights as a warm start
(trainers.warmstart: its adaptive parts fresh or derived, as for any warm start).

A base the parent cannot be cut to (a dimension beyond the parent's, or one slicing cannot
change: patch size, attention kind, a stage's heads under cascaded group attention) is told
by :func:`misfit`, which compares what slicing gives with the base model tensor by tensor.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

import search_spaces
from search_spaces.config import Config, ConfigError
from search_spaces.dims import Choice

from .groups import group_layout
from .pruning import Pruned, slice_to
from .warmstart import CONFIG, WEIGHTS, InitError

MODE = "importance"  # the one way to inherit so far: slices ranked by Taylor importance


@dataclasses.dataclass(frozen=True)
class Parent:
    """A trained parent: its space, ``config``, the model with its weights (eval mode) and
    the input conventions of its export (``num_classes``, ``in_chans``, ...)."""

    space: search_spaces.SearchSpace
    config: Config
    model: nn.Module
    inputs: Mapping[str, Any]

    def zero_scores(self) -> dict[str, torch.Tensor]:
        """Scores of no information (enough to ask what slicing gives, not which)."""
        return {name: torch.zeros(g.size) for name, g in group_layout(self.model).items()}


def read_parent(path: str | Path) -> Parent:
    """The export folder at ``path`` as a :class:`Parent`; InitError if it is none."""
    folder = Path(path)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise InitError(f"{str(folder)!r} is not an export folder (no {CONFIG} and {WEIGHTS}):"
                        " inheritance needs the parent's config")
    export = json.loads((folder / CONFIG).read_text())
    space = search_spaces.get(export["space"])
    config = space.config_from_dict(export["config"])
    inputs = export["input"]
    model = space.build(config, num_classes=inputs["num_classes"], in_chans=inputs["in_chans"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    return Parent(space=space, config=config, model=model.eval(), inputs=inputs)


def base_config(parent: Parent, candidate: Config) -> Config:
    """The parent's config with ``candidate``'s architecture dimensions: what the parent is
    cut to (the candidate without its token policy, for an adaptive one)."""
    space = parent.space
    params = {**space.params_fn(parent.config), **space.architecture_of(candidate)}
    return space.from_params(params, {name: Choice((value,)) for name, value in params.items()})


def misfit(parent: Parent, base: Config) -> str | None:
    """Why the parent cannot be cut to ``base`` (the first tensor that differs, or the group
    it has too few of); None when it can."""
    return _cut(parent, base, parent.zero_scores())[1]


def _cut(parent: Parent, base: Config,
         scores: Mapping[str, torch.Tensor]) -> tuple[Pruned | None, str | None]:
    """The parent cut to ``base`` by ``scores``, and why the cut does not fit ``base``'s
    model tensor by tensor (None: it fits)."""
    try:
        cut = slice_to(parent.config, parent.model, scores, base)
    except ValueError as err:
        return None, str(err)
    want = parent.space.build(base, num_classes=parent.inputs["num_classes"],
                              in_chans=parent.inputs["in_chans"]).state_dict()
    for name, tensor in want.items():
        have = cut.state_dict.get(name)
        if have is None:
            return cut, f"tensor {name!r} of the candidate has no counterpart in the parent"
        if tuple(have.shape) != tuple(tensor.shape):
            return cut, (f"tensor {name!r} is {tuple(tensor.shape)} in the candidate; slicing "
                         f"the parent gives {tuple(have.shape)}")
    extra = sorted(set(cut.state_dict) - set(want))
    return cut, (f"the parent's tensor {extra[0]!r} has no place in the candidate"
                 if extra else None)


def inherit(parent: Parent, candidate: Config,
            scores: Mapping[str, torch.Tensor]) -> Pruned:
    """The parent cut to ``candidate``'s base by ``scores`` (the parent's Taylor importance);
    InitError naming the misfit when the candidate is not within the parent."""
    try:
        base = base_config(parent, candidate)
    except ConfigError as err:
        raise InitError(f"the candidate's architecture on the parent's config: {err}") from None
    cut, why = _cut(parent, base, scores)
    if why is not None:
        raise InitError(f"the candidate is not within the parent: {why}")
    return cut
