"""A toy adaptive family that lives only in the tests: a two-stage MLP with an early exit.

It proves the adaptive contract (search_spaces/adaptive.py): nothing in nas/ or trainers/
knows it. Stage 1 (flatten, Linear, ReLU) feeds exit head 1; an image whose exit-1 max softmax
probability reaches ``exit_confidence`` stops there with those logits; the others run stage 2,
whose head 2 refines them (logits 1 + logits 2; in evaluation only those images run it: real
skipping). The loss adds ``exit_weight`` x the cross-entropy of exit 1 (a loss term this
module registers itself).
The budget knob ``exit_confidence`` moves DOWN to skip more (its ladder runs toward 0.5).
A spec loads it with ``plugins: [path/to/toy_family.py]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.adaptive import Adaptive, BudgetKnob, Calibration, Count, LossTerm, ladder
from search_spaces.config import Config, check
from search_spaces.dims import Choice, Dim, Fixed, TrialLike
from search_spaces.output import ModelOutput
from search_spaces.registry import SearchSpace, get, names, register
from search_spaces.structure import Groups, Knob, Part, Structure, kept_count, linear, rows
from trainers.losses import TERMS, register_term

NAME = "toy-exit"
KNOB = "exit_confidence"
LIMIT = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(Config):
    KIND = NAME

    img_size: int = 16
    hidden: int = 32
    exit_weight: float = 0.5
    exit_confidence: float = 0.9

    def __post_init__(self) -> None:
        check(0 < self.exit_confidence <= 1, f"`{KNOB}`={self.exit_confidence} must be in "
              "(0, 1]", field=KNOB)


class ToyExitNet(nn.Module):
    def __init__(self, config: ToyConfig, *, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.threshold = config.exit_confidence
        self.stage1 = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * config.img_size ** 2,
                                                            config.hidden), nn.ReLU())
        self.head1 = nn.Linear(config.hidden, num_classes)
        self.stage2 = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.ReLU())
        self.head2 = nn.Linear(config.hidden, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.stage1(x)
        first = self.head1(h)
        if self.training:
            return ModelOutput(first + self.head2(self.stage2(h)), {"exit1_logits": first})
        exits = first.softmax(-1).amax(-1) >= self.threshold
        logits = first.clone()
        rest = (~exits).nonzero().squeeze(1)
        if rest.numel():
            logits[rest] = first[rest] + self.head2(self.stage2(h[rest])).to(logits.dtype)
        return ModelOutput(logits, {"exited": exits})


@dataclasses.dataclass(frozen=True)
class ToyCost:
    first: float  # stage 1 + head 1
    second: float  # stage 2 + head 2

    def full(self) -> float:
        return self.first + self.second

    def per_image(self, aux: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.first + self.second * (~aux["exited"]).double()

    def usage(self, aux: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"exited_share": aux["exited"].double()}


class ToyExit(Adaptive):
    def knobs(self) -> dict[str, float]:
        return {KNOB: self.config.exit_confidence}

    def operating_points(self, points: int, limits: Mapping[str, float],
                         calibration: Calibration | None = None) -> list[dict[str, float]]:
        stop = limits.get(KNOB, LIMIT)
        return [{KNOB: v} for v in ladder(self.config.exit_confidence, stop, points)]

    def cost_model(self, model: nn.Module, input_shape: Sequence[int], count: Count) -> ToyCost:
        hidden = (model.head1.in_features,)
        return ToyCost(first=count(model.stage1, input_shape) + count(model.head1, hidden),
                       second=count(model.stage2, hidden) + count(model.head2, hidden))

    def loss_terms(self) -> tuple[LossTerm, ...]:
        return (LossTerm("toy_exit_ce", ("exit1_logits", "labels"), self.config.exit_weight),)


class ToyStructure(Structure):
    """Hidden channel c of each stage: its Linear's row c and the columns c that read it."""

    models, components, guidance = (ToyExitNet,), ("ffn",), (Knob("ffn", "hidden"),)

    @classmethod
    def groups(cls, model: ToyExitNet) -> dict[str, Groups]:
        ids = torch.arange(model.head1.in_features)
        readers = {"stage1.1": ("head1", "stage2.0"), "stage2.0": ("head2",)}
        return {f"{layer}.hidden": Groups(len(ids), (*rows(linear(layer), ids), *(
            Part(f"{r}.weight", 1, ids) for r in readers[layer]))) for layer in readers}

    def pruned(self, ratios: Mapping[str, float]) -> ToyConfig:
        return self.config.replace(hidden=kept_count(self.config.hidden, ratios.get("ffn", 1)))

    def kept(self, new: ToyConfig, name: str, group: Groups, state: Any) -> int:
        return new.hidden


def exit_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *,
                       weight: float) -> torch.Tensor:
    return weight * F.cross_entropy(logits.float(), labels)


DIMS: dict[str, Dim] = {"img_size": Fixed(16), "hidden": Choice((16, 32)),
                        "exit_weight": Choice((0.5, 1.0)), KNOB: Fixed(0.9)}


def suggest(trial: TrialLike, dims: Mapping[str, Dim]) -> ToyConfig:
    return ToyConfig(**{name: dims[name].suggest(trial, name) for name in DIMS})


def params(config: ToyConfig) -> dict[str, Any]:
    return config.to_dict()


def build(config: ToyConfig, *, num_classes: int, in_chans: int = 3) -> ToyExitNet:
    return ToyExitNet(config, num_classes=num_classes, in_chans=in_chans)


if NAME not in names():
    register(SearchSpace(
        name=NAME, config_cls=ToyConfig, presets={"small": ToyConfig()}, dims=DIMS,
        suggest_fn=suggest,
        build_fn=build, params_fn=params, adaptive_fn=ToyExit, structure_cls=ToyStructure,
        budget_knobs={KNOB: BudgetKnob(low=0.0, high=1.0, limit=LIMIT)},
        description="test-only two-stage MLP with an early exit"))
if "toy_exit_ce" not in TERMS:
    register_term("toy_exit_ce", exit_cross_entropy)
SPACE = get(NAME)
