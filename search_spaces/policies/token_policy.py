"""What a token policy gives the family that runs it (search_spaces/policies/__init__.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..adaptive import Adaptive, BudgetKnob
from ..config import Config
from ..dims import Dim, TrialLike


@dataclasses.dataclass(frozen=True)
class TokenPolicy:
    """One token policy: how a config of an isotropic ViT turns it on, and what it builds.

    ``fields`` is the config mixin (a frozen, keyword-only dataclass) of the policy's own
    fields, ``dims`` their search dimensions and ``budget_knobs`` its inference-time knobs.
    ``check_fields(config)`` checks the policy's fields of any config that has them (they are
    checked whatever the config's policy); ``check_config(config)`` the rules of a config that
    uses the policy (e.g. a depth it needs); ``check_dims(dims)`` those of a search domain
    that may draw it (``dims`` merged over the family's). ``suggest(trial, dims)`` draws the
    policy's fields of a candidate that uses it. ``build(config, **model)`` builds the model:
    ``model`` are the keyword arguments of the family's static model, the policy's model
    adds its own. ``adaptive`` is the policy's side of the adaptive contract. Its side of the
    structure contract (search_spaces/structure.py): ``unprunable(config)``, the components
    pruning must keep whole because the policy depends on their count (with the reason), and
    ``answers(output)``, the logits a trained model answers with (None: its own logits).
    """

    name: str
    fields: type
    dims: Mapping[str, Dim]
    budget_knobs: Mapping[str, BudgetKnob]
    suggest: Callable[[TrialLike, Mapping[str, Dim]], dict[str, Any]]
    build: Callable[..., nn.Module]
    adaptive: type[Adaptive]
    check_fields: Callable[[Config], None]
    check_config: Callable[[Config], None] | None = None
    check_dims: Callable[[Mapping[str, Dim]], None] | None = None
    unprunable: Callable[[Config], dict[str, str]] | None = None
    answers: Callable[[Any], list[torch.Tensor]] | None = None

    def field_names(self) -> tuple[str, ...]:
        """The config fields this policy adds."""
        return tuple(f.name for f in dataclasses.fields(self.fields))
