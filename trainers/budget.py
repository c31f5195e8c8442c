"""Budget points: one trained adaptive model, many (accuracy, cost) operating points.

An adaptive config's budget knobs (search_spaces/adaptive.py) move at inference without
retraining. :func:`budget_points` evaluates a trained model at each of its operating points
on the validation split and returns, per point, its knob values, the accuracy, the MACs it
really executed per image (the family's cost model over the run's aux, averaged over the
split), the family's usage figures and, when asked, the latency of that point's model
measured on real validation images. Nothing here knows which family it evaluates.

A family that fits its points on held-out outputs (``Adaptive.calibration_knobs``) gets them
from the data's calibration split (:func:`operating_points`), never from train or val.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import search_spaces
from search_spaces.adaptive import CostModel
from search_spaces.config import Config
from search_spaces.output import ModelOutput

from .data import Data
from .loop import evaluate
from .measure import Latency, count_macs

Measure = Callable[[nn.Module], Latency]


def cost_model(space: str, config: Config, model: nn.Module,
               input_shape: Sequence[int]) -> CostModel:
    """The adaptive ``config``'s cost model of ``model``, counted with fvcore."""
    adaptive = search_spaces.get(space).adaptive(config)
    if adaptive is None:
        raise ValueError(f"{type(config).__name__} is static: it has no budget points")
    return adaptive.cost_model(model, input_shape, count_macs)


def full_macs(space: str, config: Config, model: nn.Module, input_shape: Sequence[int]) -> float:
    """MACs per image with nothing skipped: fvcore's count of a static model, the cost
    model's full count of an adaptive one (whose traced path depends on its input)."""
    if search_spaces.get(space).adaptive(config) is None:
        return count_macs(model, input_shape)
    return cost_model(space, config, model, input_shape).full()


def at_knobs(space: str, config: Config, model: nn.Module, knobs: Mapping[str, Any], *,
             num_classes: int, in_chans: int) -> nn.Module:
    """The same trained weights built with the budget knobs at ``knobs`` (eval mode, same
    device as ``model``)."""
    fam = search_spaces.get(space)
    adaptive = fam.adaptive(config)
    if adaptive is None:
        raise ValueError(f"{type(config).__name__} is static: it has no budget knobs")
    net = fam.build(adaptive.with_knobs(knobs), num_classes=num_classes, in_chans=in_chans)
    net.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    return net.to(device).eval()


def operating_points(space: str, config: Config, model: nn.Module, data: Data, *,
                     points: int, limits: Mapping[str, float] | None = None,
                     batch_size: int = 256) -> list[dict[str, Any]]:
    """The family's ``points`` operating points of the trained ``model``; a family that asks
    for calibration outputs gets those of ``model`` at its calibration knobs on the data's
    calibration split (run when the family reads them)."""
    adaptive = search_spaces.get(space).adaptive(config)
    if adaptive is None:
        raise ValueError(f"{type(config).__name__} is static: it has no budget points")
    knobs = adaptive.calibration_knobs()
    calibration = None
    if knobs is not None:
        net = at_knobs(space, config, model, knobs, num_classes=data.num_classes,
                       in_chans=data.in_chans)

        def calibration() -> Iterator[tuple[Any, Any]]:
            for images, labels in data.calibration_batches(batch_size):
                with torch.no_grad():
                    output = net(images)
                yield output, labels

    return adaptive.operating_points(points, limits or {}, calibration)


def evaluate_point(net: nn.Module, data: Data, cost: CostModel, *,
                   batch_size: int) -> dict[str, float]:
    """Validation accuracy and loss, MACs executed per image and the family's usage
    figures (each averaged over the validation images)."""
    macs: list[torch.Tensor] = []
    usage: dict[str, list[torch.Tensor]] = {}

    def collect(output: torch.Tensor | ModelOutput) -> None:
        if isinstance(output, ModelOutput):
            macs.append(cost.per_image(output.aux).cpu())
            for name, values in cost.usage(output.aux).items():
                usage.setdefault(name, []).append(values.double().cpu())

    val = evaluate(net, data.val_batches(batch_size), on_output=collect)
    point = {"accuracy": val["accuracy"], "val_loss": val["loss"]}
    point["macs"] = float(torch.cat(macs).mean()) if macs else cost.full()
    point.update({name: float(torch.cat(v).mean()) for name, v in usage.items()})
    return point


def budget_points(space: str, config: Config, model: nn.Module, data: Data, *,
                  points: int | None = None, knobs: Sequence[Mapping[str, Any]] | None = None,
                  limits: Mapping[str, float] | None = None, batch_size: int = 256,
                  measure: Measure | None = None,
                  cost: CostModel | None = None) -> list[dict[str, Any]]:
    """Evaluate ``model`` at its operating points: one dict per point (``point`` = its
    index, ``knobs`` = its knob values).

    The points are ``knobs`` if given, else the family's ``points`` operating points
    (``limits``: the far end of each knob's ladder). ``measure(net)`` times each point's
    model (None: no latency); time it on real images, as the cost depends on the data.
    ``cost``: the model's cost model if already counted.
    """
    fam = search_spaces.get(space)
    adaptive = fam.adaptive(config)
    if adaptive is None:
        raise ValueError(f"{type(config).__name__} is static: it has no budget points")
    if knobs is None:
        knobs = operating_points(space, config, model, data, points=points or 1,
                                 limits=limits, batch_size=batch_size)
    cost = cost or cost_model(space, config, model, data.input_shape)
    rows = []
    for index, values in enumerate(knobs):
        net = at_knobs(space, config, model, values, num_classes=data.num_classes,
                       in_chans=data.in_chans)
        row: dict[str, Any] = {"point": index, "knobs": dict(values), "full_macs": cost.full(),
                               **evaluate_point(net, data, cost, batch_size=batch_size)}
        if measure is not None:
            row.update(measure(net).metrics())
        rows.append(row)
    return rows
