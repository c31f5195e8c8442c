"""AdaViT usage gates (``token_policy="gating"``), with real skipping at inference.

"AdaViT: Adaptive Vision Transformers for Efficient Image Recognition", Meng et al., CVPR
2022, https://arxiv.org/abs/2111.15668 (PAPERS.md section 3).

- fields.py: :class:`GateFields` (the ``gate_*`` config fields), their dims, the budget
  knobs (one threshold per gate kind);
- gates.py: the gates of a block, their bits, the masked and the skipping paths;
- model.py: :class:`GatedViT`, the static ViT with its ``gates``;
- cost.py: :class:`GateCost` (built on the shared token cost,
  search_spaces/policies/token_cost.py);
- adaptive.py: :class:`Gating`, the policy's side of the adaptive contract.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..token_policy import TokenPolicy
from . import gates
from .adaptive import Gating
from .cost import GateCost
from .fields import (
    BUDGET_KNOBS,
    DIMS,
    KINDS,
    LIMITS,
    NAME,
    SUBSETS,
    TARGETS,
    THRESHOLDS,
    GateFields,
    GateParams,
    check_config,
    check_dims,
    kinds_of,
    suggest,
)


def build(config: Any, **vit: Any) -> nn.Module:
    """The gated model of a ``vit`` config (``vit``: the static model's arguments); its
    module is imported when a model is built (see the halting policy's ``build``)."""
    from .model import GatedViT

    return GatedViT(gating=config.gating_params(), **vit)


POLICY = TokenPolicy(name=NAME, fields=GateFields, dims=DIMS, budget_knobs=BUDGET_KNOBS,
                     suggest=suggest, build=build, adaptive=Gating,
                     check_fields=GateFields._check_gates, check_config=check_config,
                     check_dims=check_dims)

__all__ = ["BUDGET_KNOBS", "DIMS", "KINDS", "LIMITS", "NAME", "POLICY", "SUBSETS", "TARGETS",
           "THRESHOLDS", "GateCost", "GateFields", "GateParams", "Gating", "build",
           "check_config", "check_dims", "gates", "kinds_of", "suggest"]
