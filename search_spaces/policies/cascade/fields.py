"""The cascade policy's config fields, their search dimensions and its budget knobs (DVT).

:class:`CascadeFields` are the ``cascade_*`` fields a ``vit`` config carries,
:class:`CascadeParams` what they give the model (search_spaces/policies/cascade/model.py);
``DIMS`` their search dimensions (the earlier stages' token grids, each reuse on or off); the
budget knobs are one exit threshold per stage but the last, fitted on held-out data
(search_spaces/policies/cascade/exits.py).

Stage grids are fractions of the model's own grid ``g = img_size // patch_size`` (the last
stage's): ``cascade_scales="0.5+0.7"`` gives a 3-stage cascade with grids ``round(0.5 g)``,
``round(0.7 g)``, ``g`` (rounded half up): 7, 10, 14 at 224 pixels with patch 16 (the paper's
T2T-ViT cascade), 4, 5, 7 at 28 pixels with patch 4. Fractions, not token counts, so that one
domain suits every patch size a search draws; grids that coincide on a small grid are one
stage (at 2x2: 1x1, then 2x2), and a cascade needs at least two.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ...adaptive import BudgetKnob
from ...config import ConfigError, check
from ...dims import Choice, Dim, Fixed, TrialLike

NAME = "cascade"  # the token_policy value
EXITS = ("cascade_exit_1", "cascade_exit_2")  # the exit thresholds of stages 1 and 2
OFF = 1.0  # an exit threshold of 1 is off: the image goes on to the next stage
SCALES = ("0.5", "0.7", "0.5+0.7", "0.3+0.6")


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5+0.7"`` -> (0.5, 0.7); ValueError if not 1 or 2 '+'-joined numbers."""
    parts = tuple(float(p) for p in text.split("+"))
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"{len(parts)} scales")
    return parts


def grids_of(scales: str, full: int) -> tuple[int, ...]:
    """Every stage's grid side: each scale times ``full`` rounded half up, then ``full``;
    scales that round to the same grid (small grids) give one stage."""
    sides = (*(max(1, math.floor(s * full + 0.5)) for s in parse_scales(scales)), full)
    return tuple(sorted(set(sides)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CascadeFields:
    """The ``cascade_*`` fields of a config; they matter only when it is a cascade.

    ``cascade_scales``: the token grids of the stages before the last, as fractions of the
    model's grid ('+'-joined, 1 or 2 of them: a cascade of 2 or 3 stages); the reuse
    switches ``cascade_feature_reuse`` and ``cascade_relation_reuse``; and the
    inference-time knobs ``cascade_exit_1`` and ``cascade_exit_2``, the max softmax
    probability at which an image leaves after stage 1 and 2 (in (0, 1]; 1, the trained
    value, turns the exit off).
    """

    cascade_scales: str = "0.5+0.7"
    cascade_feature_reuse: bool = True
    cascade_relation_reuse: bool = True
    cascade_exit_1: float = OFF
    cascade_exit_2: float = OFF

    def _check_cascade(self) -> None:
        try:
            scales = parse_scales(self.cascade_scales) if isinstance(
                self.cascade_scales, str) else None
        except ValueError:
            scales = None
        check(scales is not None and all(0 < s < 1 for s in scales)
              and list(scales) == sorted(set(scales)),
              f"`cascade_scales`={self.cascade_scales!r} must be 1 or 2 increasing "
              "'+'-joined fractions in (0, 1) of the model's token grid, e.g. '0.5+0.7'")
        for name in ("cascade_feature_reuse", "cascade_relation_reuse"):
            check(isinstance(getattr(self, name), bool),
                  f"`{name}`={getattr(self, name)!r} must be true or false")
        for name in EXITS:
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool)
                  and 0 < value <= 1, f"`{name}`={value!r} must be a number in (0, 1] "
                                      "(1: the exit is off)")

    def cascade_params(self, full: int) -> CascadeParams:
        grids = grids_of(self.cascade_scales, full)
        return CascadeParams(grids=grids, thresholds=tuple(
            float(getattr(self, name)) for name in EXITS[:len(grids) - 1]),
            feature_reuse=self.cascade_feature_reuse,
            relation_reuse=self.cascade_relation_reuse)


def check_grid(scales: str, full: int) -> None:
    """``scales`` must give at least two stages on a ``full`` x ``full`` token grid."""
    check(len(grids_of(scales, full)) >= 2,
          f"`cascade_scales`={scales!r} gives a single stage for a "
          f"{full}x{full} token grid: a cascade needs a grid of at least 2x2 "
          "(smaller patches)")


def check_config(config: Any) -> None:
    """A cascade config's scales must give at least two stages on its own token grid."""
    check_grid(config.cascade_scales, config.img_size // config.patch_size)


def check_dims(dims: Mapping[str, Dim]) -> None:
    """Every (img_size, patch_size, cascade_scales) draw of a space's ``dims`` (merged over
    the family's, patch sizes dividing image sizes) must give a cascade of >= 2 stages."""
    for img in dims["img_size"].values():
        for patch in dims["patch_size"].values():
            for scales in dims["cascade_scales"].values():
                try:
                    CascadeFields(cascade_scales=scales)._check_cascade()
                    check_grid(scales, img // patch)
                except ConfigError as err:
                    raise ConfigError(f"space.dims.cascade_scales: value {scales!r} at "
                                      f"img_size={img}, patch_size={patch}: {err}") from None


@dataclasses.dataclass(frozen=True)
class CascadeParams:
    """Every stage's grid (the last the model's own), the exit thresholds of the stages but
    the last, and which reuse is on."""

    grids: tuple[int, ...]
    thresholds: tuple[float, ...]
    feature_reuse: bool = True
    relation_reuse: bool = True


DIMS: dict[str, Dim] = {
    "cascade_scales": Choice(SCALES),
    "cascade_feature_reuse": Choice((True, False)),
    "cascade_relation_reuse": Choice((True, False)),
    **{name: Fixed(OFF) for name in EXITS},  # trained with every exit off: points fit them
}
BUDGET_KNOBS = {
    name: BudgetKnob(low=0.0, high=1.0, limit=0.5, description=(
        f"exit threshold after stage {i + 1}: an image leaves when its max softmax "
        "probability reaches it (1: off); fitted on calibration data"), fitted=True)
    for i, name in enumerate(EXITS)
}


def suggest(trial: TrialLike, dims: Mapping[str, Dim]) -> dict[str, Any]:
    """The ``cascade_*`` fields of a cascade candidate."""
    return {name: dims[name].suggest(trial, name) for name in DIMS}
