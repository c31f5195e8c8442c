"""The one contract every adaptive family implements; static families implement nothing.

An adaptive model spends less on easy inputs (A-ViT halting, AdaViT gates, DVT cascades).
Generic code (nas/, trainers/) never names a family, a knob or an aux key: it asks the space
for the :class:`Adaptive` of a config (``SearchSpace.adaptive(config)``, None for a static
one) and uses only this interface. What a model is made of (its importance groups, what
prunes, the logits it answers with) is the other contract, search_spaces/structure.py.

Three facts only the family can know, so three methods have no default:

- ``knobs()``: which config fields are inference-time budget knobs, and their trained
  values (the caller cannot tell a threshold from a width). :class:`BudgetKnob`
  (``SearchSpace.budget_knobs``) says each knob's domain and the far end of its default
  ladder, so a spec can move that end (``budget.limits``; a ``fitted`` knob has none).
- ``operating_points(points, limits, calibration)``: how to spend less: K knob settings for
  a trained model, point 0 the trained one. A ladder, or values fitted on held-out model
  outputs (``calibration`` yields them; a ladder ignores it). An operating point is just the
  config with other knob values (``with_knobs``, a helper): exporting one writes a plain
  config. ``calibration_knobs()`` belongs to it: the knob values at which those held-out
  outputs are taken (None, the default: a ladder, no calibration images are run).
- ``cost_model(model, input_shape, count)``: what a run cost, since only the family knows
  what its ``ModelOutput.aux`` says was skipped: MACs executed per image. ``count(module,
  shape)`` is the MACs counter (fvcore) the caller injects, so this package needs none.

Two with a default that is right for most (what a static model would do):

- ``loss_terms()``: the auxiliary losses that teach the model to skip (by the name of a pure
  loss function of trainers/losses.py, the aux tensors it reads and its weight; default none).
- Warm start: ``added_parameters`` (name patterns of what the adaptive part adds to its base
  architecture: gates, reuse modules) start fresh when a candidate is warm-started from its
  base's weights, unless ``inherited(weights)`` derives their starting values from them (an
  earlier cascade stage begins as a copy of the parent); default: nothing added.
  ``is_added`` is the helper that reads the patterns.

Reviewed as a whole when the structure contract came: ``answers`` and ``unprunable`` were
structural facts and moved there; calibration stays a part of the operating points.
"""

from __future__ import annotations

import abc
import dataclasses
import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .config import Config

Count = Callable[[nn.Module, Sequence[int]], float]  # MACs of one sample of a shape


@dataclasses.dataclass(frozen=True)
class BudgetKnob:
    """An inference-time knob: values lie strictly inside (``low``, ``high``); the default
    ladder runs from the trained value to ``limit`` (the far end: most saving). A
    ``fitted`` knob's points are fitted on held-out outputs instead: it has no ladder, and a
    spec cannot give it a limit."""

    low: float
    high: float
    limit: float
    description: str = ""
    fitted: bool = False

    def check_limit(self, value: float) -> str | None:
        """Why ``value`` cannot be a ladder's far end (None if it can)."""
        if self.fitted:
            return ("its operating points are fitted on calibration data, not laid between "
                    "the trained value and a limit: remove it from budget.limits")
        if not self.low < value < self.high:
            return f"must be in ({self.low:g}, {self.high:g})"
        return None


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """``weight * TERMS[kind](*(aux[name] for name in inputs), **options)`` (trainers/losses).
    ``inputs`` may name ``"labels"``: the batch's targets."""

    kind: str
    inputs: tuple[str, ...]
    weight: float
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class CostModel(Protocol):
    """MACs per image of one trained architecture, from what its runs report."""

    def full(self) -> float:
        """MACs per image when nothing is skipped."""

    def per_image(self, aux: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """MACs each image of a batch executed (B,), float64, from the batch's aux."""

    def usage(self, aux: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image usage figures (B,) of a batch, by column name (e.g. tokens kept)."""


Calibration = Callable[[], Iterator[Any]]  # yields (model output, labels) of held-out data


class Adaptive(abc.ABC):
    """The adaptive side of one config; a family subclasses it in its own module."""

    added_parameters: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        self.config = config

    @abc.abstractmethod
    def knobs(self) -> dict[str, float]:
        """The budget knobs (config field names) and their trained values."""

    @abc.abstractmethod
    def operating_points(self, points: int, limits: Mapping[str, float],
                         calibration: Calibration | None = None) -> list[dict[str, float]]:
        """``points`` knob settings, point 0 the trained one."""

    @abc.abstractmethod
    def cost_model(self, model: nn.Module, input_shape: Sequence[int],
                   count: Count) -> CostModel:
        """The per-image cost model of ``model`` (this config's architecture)."""

    def calibration_knobs(self) -> dict[str, float] | None:
        """Knob values for the calibration outputs ``operating_points`` fits on (None: the
        family fits nothing on held-out data)."""
        return None

    def loss_terms(self) -> tuple[LossTerm, ...]:
        return ()

    def inherited(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Starting values of added parameters derived from the base's trained ``weights``
        (by parameter name; the default: none, every added parameter starts fresh)."""
        return {}

    def with_knobs(self, values: Mapping[str, Any]) -> Config:
        """The config at other knob values (an operating point)."""
        unknown = sorted(set(values) - set(self.knobs()))
        if unknown:
            raise KeyError(f"{unknown} are not budget knobs of this config; "
                           f"knobs: {sorted(self.knobs())}")
        return self.config.replace(**values)

    def is_added(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to what the adaptive part adds."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.added_parameters)


def ladder(start: float, stop: float, points: int) -> tuple[float, ...]:
    """``points`` values from ``start`` (point 0) evenly to ``stop``."""
    if points < 1:
        raise ValueError(f"points={points} must be >= 1")
    if points == 1:
        return (start,)
    step = (stop - start) / (points - 1)
    return tuple(round(start + i * step, 6) for i in range(points))

