"""The cascade token policy's side of the adaptive contract (DVT, search_spaces/dvt.py).

:class:`CascadeFields` are the ``cascade_*`` fields a ``vit`` config carries; ``DIMS`` their
search dimensions (the earlier stages' token grids, each reuse on or off); :class:`Cascade`
gives the budget knobs (one exit threshold per stage but the last), the operating points
fitted on held-out data, the cost model and the summed cross-entropy of the earlier stages.

Stage grids are fractions of the model's own grid ``g = img_size // patch_size`` (the last
stage's): ``cascade_scales="0.5+0.7"`` gives a 3-stage cascade with grids ``round(0.5 g)``,
``round(0.7 g)``, ``g`` (rounded half up): 7, 10, 14 at 224 pixels with patch 16 (the paper's
T2T-ViT cascade), 4, 5, 7 at 28 pixels with patch 4. Fractions, not token counts, so that one
domain suits every patch size a search draws; grids that coincide on a small grid are one
stage (at 2x2: 1x1, then 2x2), and a cascade needs at least two.

Exit thresholds (DVT's rule, as its code fits them): for a schedule value q the exit
proportions are ``q^k`` for k = 1..S, normalised; stage by stage, ``floor(N p_k)`` of the N
calibration images exit at stage k, the most confident of those still running, and T_k is the
confidence of the last of them (images tied with it exit too). A proportion that rounds to no
image turns the exit off (threshold 1: the value a cascade is trained with, where every image
runs every stage; so the trained point 0 is the full cascade). The calibration images are a
split of their own (trainers/dataset.py), neither trained on nor used for search decisions;
the official code fits on training images. The operating points after point 0 use q spread
evenly in log q over the range of the paper's schedule (1..59)/20, from 2.95 (most images
reach the last stage) down to 0.05 (most leave at the first): :func:`schedule`;
a fitted threshold takes no ``budget.limits`` entry (the spec refuses one, naming it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from .adaptive import Adaptive, BudgetKnob, Calibration, Count, LossTerm, ladder
from .config import ConfigError, check
from .dims import Choice, Dim, Fixed, TrialLike

EXITS = ("cascade_exit_1", "cascade_exit_2")  # the exit thresholds of stages 1 and 2
OFF = 1.0  # an exit threshold of 1 is off: the image goes on to the next stage
BELOW_ONE = float(torch.tensor(1.0).nextafter(torch.tensor(0.0)))  # float32 just below 1
Q_RANGE = (59 / 20, 1 / 20)  # the paper's schedule (1..59)/20, from most to least compute
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

    def _check_cascade(self, full: int, active: bool) -> None:
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
        if active:
            grids = grids_of(self.cascade_scales, full)
            check(len(grids) >= 2,
                  f"`cascade_scales`={self.cascade_scales!r} gives a single stage for a "
                  f"{full}x{full} token grid: a cascade needs a grid of at least 2x2 "
                  "(smaller patches)")

    def cascade_params(self, full: int) -> CascadeParams:
        grids = grids_of(self.cascade_scales, full)
        return CascadeParams(grids=grids, thresholds=tuple(
            float(getattr(self, name)) for name in EXITS[:len(grids) - 1]),
            feature_reuse=self.cascade_feature_reuse,
            relation_reuse=self.cascade_relation_reuse)


def check_dims(dims: Mapping[str, Dim]) -> None:
    """Every (img_size, patch_size, cascade_scales) draw of a space's ``dims`` (merged over
    the family's, patch sizes dividing image sizes) must give a cascade of >= 2 stages."""
    for img in dims["img_size"].values():
        for patch in dims["patch_size"].values():
            for scales in dims["cascade_scales"].values():
                try:
                    CascadeFields(cascade_scales=scales)._check_cascade(img // patch, True)
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


def exit_proportions(q: float, stages: int) -> tuple[float, ...]:
    """DVT's share of images leaving at each stage: ``q^k`` (k = 1..stages), normalised."""
    weights = [q ** k for k in range(1, stages + 1)]
    return tuple(w / sum(weights) for w in weights)


def fit_thresholds(confidence: torch.Tensor,
                   proportions: Sequence[float]) -> tuple[float, ...]:
    """The exit thresholds (stages but the last) that make ``floor(N p_k)`` of the N images
    of ``confidence`` (N, S) (each stage's max probability) exit at stage k, greedily."""
    n, stages = confidence.shape
    running = torch.ones(n, dtype=torch.bool)
    thresholds = []
    for k in range(stages - 1):
        count = math.floor(n * proportions[k] + 1e-9)
        conf = confidence[running, k]
        if count == 0 or conf.numel() == 0:
            thresholds.append(OFF)
            continue
        ranked = conf.sort(descending=True).values
        threshold = min(float(ranked[min(count, ranked.numel()) - 1]), BELOW_ONE)
        thresholds.append(threshold)
        running &= ~(confidence[:, k] >= threshold)
    return tuple(thresholds)


def schedule(points: int) -> tuple[float, ...]:
    """``points`` values of q over the range of the paper's (1..59)/20, most compute first,
    evenly spaced in log q (one point: q = 1, equal proportions).

    Log spacing because q and 1/q give the same exit shares in reverse order: the shares
    move evenly with log q, while the paper's linear grid puts most of its values above 1
    (most images reach the last stage; measured: 4 of 7 linear points cost more than a
    static parent) and few where a cascade saves compute."""
    if points == 1:
        return (1.0,)
    return tuple(round(math.exp(v), 4) for v in ladder(*(math.log(q) for q in Q_RANGE), points))


class _Prefix(nn.Module):
    """The first ``stages`` stages on every image, for counting their MACs."""

    def __init__(self, model: nn.Module, stages: int) -> None:
        super().__init__()
        self.model, self.stages = model, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # every stage's logits: a traced graph drops what no output needs (an exit's head)
        return torch.cat(self.model.forward_stages(x, self.stages), dim=-1)


@dataclasses.dataclass(frozen=True)
class CascadeCost:
    """MACs per image: the cumulative count of the stages it ran (reuse modules included),
    counted with the injected counter on the first k stages run in full."""

    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int], count: Count) -> CascadeCost:
        was_training = model.training
        try:
            return cls(tuple(float(count(_Prefix(model, k).train(was_training), input_shape))
                             for k in range(1, len(model.sizes) + 1)))
        finally:
            model.train(was_training)

    def full(self) -> float:
        return self.cumulative[-1]

    def per_image(self, aux: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stage = aux["cascade_exit"]
        return torch.tensor(self.cumulative, dtype=torch.float64, device=stage.device)[stage]

    def usage(self, aux: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per image: 1 for the stage it exited at (``exit_share_k``, k from 1)."""
        stage = aux["cascade_exit"]
        return {f"exit_share_{k + 1}": (stage == k).double()
                for k in range(len(self.cumulative))}


def answers(output: Any) -> list[torch.Tensor]:
    """Every stage's logits (the exits off, as trained: each stage may answer)."""
    return [*output.aux["cascade_logits"].unbind(1), output.logits]


def whole(config: Any) -> dict[str, str]:
    """What pruning keeps whole: relationship reuse maps every layer's heads of one stage onto
    the next stage's."""
    if not config.cascade_relation_reuse:
        return {}
    why = "relationship reuse maps every head of every layer of one stage to the next"
    return {"heads": why, "depth": why}


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
