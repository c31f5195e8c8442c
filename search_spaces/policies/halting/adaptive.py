"""The halting policy's side of the adaptive contract (search_spaces/adaptive.py).

:class:`Halting`: the budget knob ``halt_eps``, its threshold ladder, the token cost model
(search_spaces/policies/halting/cost.py) and A-ViT's ponder and depth-prior loss terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from ...adaptive import Adaptive, Calibration, Count, LossTerm, ladder
from ..token_cost import TokenCost
from .cost import HaltingCost
from .fields import BUDGET_KNOBS, KNOB

PONDER_AT_12 = 5e-4  # A-ViT's README alpha_p, for 12 blocks


def ponder_weight(ponder: float | None, depth: int) -> float:
    """alpha_p: as given, or (None) the paper's 5e-4 at 12 blocks scaled to ``depth``."""
    return PONDER_AT_12 * 12 / depth if ponder is None else ponder


class Halting(Adaptive):
    """A-ViT halting of a ``vit`` config (``depth`` and the :class:`HaltingFields`)."""

    def knobs(self) -> dict[str, float]:
        return {KNOB: self.config.halt_eps}

    def operating_points(self, points: int, limits: Mapping[str, float],
                         calibration: Calibration | None = None) -> list[dict[str, float]]:
        """Thresholds from the trained eps (point 0) evenly up to the limit (default 0.95)."""
        stop = limits.get(KNOB, BUDGET_KNOBS[KNOB].limit)
        return [{KNOB: v} for v in ladder(self.config.halt_eps, stop, points)]

    def cost_model(self, model: nn.Module, input_shape: Sequence[int],
                   count: Count) -> HaltingCost:
        return HaltingCost(TokenCost.of(model, input_shape, count))

    def loss_terms(self) -> tuple[LossTerm, ...]:
        """A-ViT: alpha_p * mean(rho) + alpha_d * KL(Gaussian(target depth) || halting)."""
        c = self.config
        return (LossTerm("ponder", ("rho",), ponder_weight(c.halt_ponder, c.depth)),
                LossTerm("depth_prior", ("halt_distribution",), c.halt_prior,
                         {"mean": c.halt_target * c.depth}))
