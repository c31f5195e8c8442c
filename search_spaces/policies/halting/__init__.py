"""A-ViT token halting (``token_policy="halting"``), with real token removal at inference.

"A-ViT: Adaptive Tokens for Efficient Vision Transformer", Yin et al., CVPR 2022,
https://arxiv.org/abs/2112.07658 (PAPERS.md section 2).

- fields.py: :class:`HaltingFields` (the ``halt_*`` config fields), their dims, the budget
  knob ``halt_eps``;
- act.py: ACT bookkeeping, the masked and the token-removal paths;
- model.py: :class:`HaltingViT`, the static ViT running them;
- cost.py: :class:`HaltingCost` (the shared token cost, search_spaces/policies/token_cost.py);
- adaptive.py: :class:`Halting`, the policy's side of the adaptive contract.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..token_policy import TokenPolicy
from .act import ActState, act_step, forward_masked, forward_removal, halting_score
from .adaptive import PONDER_AT_12, Halting, ponder_weight
from .cost import HaltingCost
from .fields import BUDGET_KNOBS, DIMS, KNOB, NAME, HaltingFields, HaltingParams, suggest


def build(config: Any, **vit: Any) -> nn.Module:
    """The halting model of a ``vit`` config (``vit``: the static model's arguments).

    model.py builds on the ViT family's model, and the family's config inherits this
    package's fields: the model module is imported here, when a model is built, so that
    importing the policies never imports the family (no import circle)."""
    from .model import HaltingViT

    return HaltingViT(halting=config.halting_params(), **vit)


POLICY = TokenPolicy(name=NAME, fields=HaltingFields, dims=DIMS, budget_knobs=BUDGET_KNOBS,
                     suggest=suggest, build=build, adaptive=Halting,
                     check_fields=HaltingFields._check_halting)

__all__ = ["BUDGET_KNOBS", "DIMS", "KNOB", "NAME", "PONDER_AT_12", "POLICY", "ActState",
           "Halting", "HaltingCost", "HaltingFields", "HaltingParams", "act_step",
           "build", "forward_masked", "forward_removal", "halting_score", "ponder_weight",
           "suggest"]
