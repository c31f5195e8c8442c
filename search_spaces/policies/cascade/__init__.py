"""DVT cascades (``token_policy="cascade"``): few tokens for easy images, with early exit.

"Not All Images are Worth 16x16 Words: Dynamic Transformers for Efficient Image
Recognition", Wang et al., NeurIPS 2021, https://arxiv.org/abs/2105.15075 (PAPERS.md
section 4).

- fields.py: :class:`CascadeFields` (the ``cascade_*`` config fields), their dims, the
  budget knobs (one exit threshold per stage but the last);
- exits.py: fitting the exit thresholds on held-out outputs;
- reuse.py: feature and relationship reuse between stages;
- model.py: :class:`CascadeViT`, the static ViT as the last stage, with the earlier ones;
- cost.py: :class:`CascadeCost`;
- adaptive.py: :class:`Cascade`, the policy's side of the adaptive contract.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..token_policy import TokenPolicy
from .adaptive import Cascade
from .cost import CascadeCost
from .exits import BELOW_ONE, Q_RANGE, exit_proportions, fit_thresholds, schedule
from .fields import (
    BUDGET_KNOBS,
    DIMS,
    EXITS,
    NAME,
    OFF,
    SCALES,
    CascadeFields,
    CascadeParams,
    check_config,
    check_dims,
    check_grid,
    grids_of,
    parse_scales,
    suggest,
)


def build(config: Any, **vit: Any) -> nn.Module:
    """The cascade of a ``vit`` config (``vit``: the static model's arguments); its module
    is imported when a model is built (see the halting policy's ``build``)."""
    from .model import CascadeViT

    grid = config.img_size // config.patch_size
    return CascadeViT(cascade=config.cascade_params(grid), **vit)


def answers(output: Any) -> list[torch.Tensor]:
    """Every stage's logits (the exits off, as trained: each stage may answer)."""
    return [*output.aux["cascade_logits"].unbind(1), output.logits]


def unprunable(config: Any) -> dict[str, str]:
    """Relationship reuse maps every layer's heads of one stage onto the next stage's."""
    if not config.cascade_relation_reuse:
        return {}
    why = "relationship reuse maps every head of every layer of one stage to the next"
    return {"heads": why, "depth": why}


POLICY = TokenPolicy(name=NAME, fields=CascadeFields, dims=DIMS, budget_knobs=BUDGET_KNOBS,
                     suggest=suggest, build=build, adaptive=Cascade,
                     check_fields=CascadeFields._check_cascade, check_config=check_config,
                     check_dims=check_dims, unprunable=unprunable, answers=answers)

__all__ = ["BELOW_ONE", "BUDGET_KNOBS", "DIMS", "EXITS", "NAME", "OFF", "POLICY", "Q_RANGE",
           "SCALES", "Cascade", "CascadeCost", "CascadeFields", "CascadeParams", "build",
           "check_config", "check_dims", "check_grid", "exit_proportions", "fit_thresholds",
           "grids_of", "parse_scales", "schedule", "suggest"]
