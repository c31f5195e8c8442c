"""The gated policy's side of the adaptive contract (AdaViT, search_spaces/adaptive.py).

:class:`Gating` gives the budget knobs (one threshold per gate kind the model has, laddered up
from the trained value: a higher threshold turns more off), the cost model
(search_spaces/policies/gating/cost.py) and AdaViT's usage losses:
``w |mean(head bits) - t_h| + w |mean(branch bits) - t_b| + w (mean(patch bits) - t_p)^2``,
w = 2, the head mean taken over the blocks whose attention branch is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from ...adaptive import Adaptive, Calibration, Count, LossTerm, ladder
from .cost import GateCost
from .fields import BUDGET_KNOBS, THRESHOLDS, kinds_of


class Gating(Adaptive):
    """AdaViT gates of a ``vit`` config (its blocks and the :class:`GateFields`)."""

    added_parameters = ("gates.*",)

    @property
    def kinds(self) -> tuple[str, ...]:
        return kinds_of(self.config.gate_kinds)

    def knobs(self) -> dict[str, float]:
        return {THRESHOLDS[k]: getattr(self.config, THRESHOLDS[k]) for k in self.kinds}

    def operating_points(self, points: int, limits: Mapping[str, float],
                         calibration: Calibration | None = None) -> list[dict[str, float]]:
        """Every threshold from its trained value (point 0) evenly up to its limit (defaults
        ``LIMITS``): all the model's gates turn more off together."""
        ladders = {name: ladder(value, limits.get(name, BUDGET_KNOBS[name].limit), points)
                   for name, value in self.knobs().items()}
        return [{name: values[i] for name, values in ladders.items()} for i in range(points)]

    def cost_model(self, model: nn.Module, input_shape: Sequence[int],
                   count: Count) -> GateCost:
        return GateCost.of(model, input_shape, count, self.kinds)

    def loss_terms(self) -> tuple[LossTerm, ...]:
        c, w, terms = self.config, self.config.gate_weight, []
        if "heads" in self.kinds:
            if "branches" in self.kinds:  # over the blocks whose attention branch is on
                terms.append(LossTerm("usage_where", ("gate_heads", "gate_branches"), w,
                                      {"target": c.gate_head_target, "index": 0}))
            else:
                terms.append(LossTerm("usage", ("gate_heads",), w,
                                      {"target": c.gate_head_target, "power": 1}))
        if "branches" in self.kinds:
            terms.append(LossTerm("usage", ("gate_branches",), w,
                                  {"target": c.gate_branch_target, "power": 1}))
        if "patches" in self.kinds:
            terms.append(LossTerm("usage", ("gate_patches",), w,
                                  {"target": c.gate_patch_target, "power": 2}))
        return tuple(terms)
