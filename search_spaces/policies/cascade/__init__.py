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


POLICY = TokenPolicy(name=NAME, fields=CascadeFields, dims=DIMS, budget_knobs=BUDGET_KNOBS,
                     suggest=suggest, build=build, adaptive=Cascade,
                     check_fields=CascadeFields._check_cascade, check_config=check_config,
                     check_dims=check_dims)

__all__ = ["BELOW_ONE", "BUDGET_KNOBS", "DIMS", "EXITS", "NAME", "OFF", "POLICY", "Q_RANGE",
           "SCALES", "Cascade", "CascadeCost", "CascadeFields", "CascadeParams", "build",
           "check_config", "check_dims", "check_grid", "exit_proportions", "fit_thresholds",
           "grids_of", "parse_scales", "schedule", "suggest"]
