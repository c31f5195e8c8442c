"""The cascade policy's side of the adaptive contract (DVT, search_spaces/adaptive.py).

:class:`Cascade` gives the budget knobs (one exit threshold per stage but the last), the
operating points fitted on held-out data (search_spaces/policies/cascade/exits.py), the cost
model and the summed cross-entropy of the earlier stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ...adaptive import Adaptive, Calibration, Count, LossTerm
from .cost import CascadeCost
from .exits import exit_proportions, fit_thresholds, schedule
from .fields import EXITS, OFF, grids_of


class Cascade(Adaptive):
    """A DVT cascade of a ``vit`` config (its blocks and the :class:`CascadeFields`). The
    last stage is named like a static ViT: a static parent's weights start it."""

    added_parameters = ("stages.*", "feature_reuse.*", "relation_reuse.*", "*.mlp.reuse.*")

    @property
    def stages(self) -> int:
        c = self.config
        return len(grids_of(c.cascade_scales, c.img_size // c.patch_size))

    def knobs(self) -> dict[str, float]:
        return {name: getattr(self.config, name) for name in EXITS[:self.stages - 1]}

    def calibration_knobs(self) -> dict[str, float]:
        """Every exit off: every calibration image runs every stage."""
        return {name: OFF for name in self.knobs()}

    def operating_points(self, points: int, limits: Mapping[str, float],
                         calibration: Calibration | None = None) -> list[dict[str, float]]:
        """Point 0 the trained thresholds; then one point per q of :func:`schedule`, its
        thresholds fitted on ``calibration`` (outputs at :meth:`calibration_knobs`)."""
        trained = self.knobs()
        if points == 1:
            return [trained]
        if calibration is None:
            raise ValueError("a cascade's exit thresholds are fitted on held-out data, and "
                             "no calibration data was given (data.calibration_size)")
        confidence = self.confidence(calibration)
        return [trained, *({name: value for name, value in zip(
            trained, fit_thresholds(confidence, exit_proportions(q, self.stages)), strict=True)}
            for q in schedule(points - 1))]

    def confidence(self, calibration: Calibration) -> torch.Tensor:
        """Every stage's max probability (N, S) of the calibration images."""
        parts = [out.aux["cascade_confidence"].cpu() for out, _ in calibration()]
        if not parts:
            raise ValueError("the calibration split is empty (data.calibration_size)")
        confidence = torch.cat(parts)
        if not bool(torch.isfinite(confidence).all()):
            raise ValueError("calibration outputs must come from the cascade with every exit "
                             "off (Adaptive.calibration_knobs)")
        return confidence

    def cost_model(self, model: nn.Module, input_shape: Sequence[int],
                   count: Count) -> CascadeCost:
        return CascadeCost.of(model, input_shape, count)

    def inherited(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every earlier stage starts as the parent (the tensors the last stage loads), its
        position embedding resized to the stage's grid (timm's bicubic resampling, the class
        token kept); the reuse modules start fresh.
        (``init.fresh: ["stages.*"]`` starts the earlier stages fresh instead.)"""
        c = self.config
        grids = grids_of(c.cascade_scales, c.img_size // c.patch_size)
        return {f"stages.{i}.{name}": resample_abs_pos_embed(tensor, (g, g)) if name == "pos_embed"
                else tensor for i, g in enumerate(grids[:-1]) for name, tensor in weights.items()}

    def loss_terms(self) -> tuple[LossTerm, ...]:
        """The earlier stages' cross-entropies, weight 1 each (the last stage's is the main
        loss): DVT's equal-weight sum."""
        return (LossTerm("stage_cross_entropy", ("cascade_logits", "labels"), 1.0),)
