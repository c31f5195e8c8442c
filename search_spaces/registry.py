"""The registry of search spaces: a family's configs, presets, suggest and build, by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .adaptive import Adaptive, BudgetKnob
from .config import Config, ConfigError
from .dims import Dim, Replay, TrialLike, check_contains
from .structure import Groups, Structure

SuggestFn = Callable[[TrialLike, Mapping[str, Dim]], Config]
ParamsFn = Callable[[Config], dict[str, Any]]
BuildFn = Callable[..., nn.Module]
AdaptiveFn = Callable[[Config], Adaptive | None]
WeightsArchitectureFn = Callable[[Mapping[str, tuple[int, ...]]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A family of models and the knobs a search may turn.

    ``dims`` are the default domains of the knobs; ``suggest(trial, dims)`` draws one config
    (defaults to ``self.dims``; it only calls ``trial.suggest_*``); ``build(config, *,
    num_classes, in_chans=3)`` is a pure function returning an ``nn.Module``.
    ``params_fn(config)`` gives the value of every knob in ``config`` (dimension name ->
    value as ``suggest`` draws it); :meth:`params` keeps those that a draw asks the trial for.

    Adaptive families (search_spaces/adaptive.py) give ``adaptive_fn(config)`` (the config's
    :class:`Adaptive`, None for a static config) and ``budget_knobs`` (every inference-time
    knob any of their configs has). ``architecture`` names the dimensions that trained weights
    fix (warm start; default: every dimension); ``weights_architecture_fn(shapes)`` reads
    those it can from a state dict's tensor shapes (None: only export folders, whose config
    says them, can be a warm start).

    ``spec_domains``: what a spec may narrow a dimension from where that is wider than its
    default in ``dims`` (e.g. ``segments``: 1 by default, up to 4 when a spec asks for
    per-segment widths); :meth:`domain` gives it.

    ``structure_cls`` answers what a config's models are made of (search_spaces/structure.py:
    importance groups, what prunes, pruned configs, guidance knobs); the default declares
    nothing (no groups, nothing prunable).
    """

    name: str
    config_cls: type[Config]
    presets: Mapping[str, Config]
    dims: Mapping[str, Dim]
    suggest_fn: SuggestFn
    build_fn: BuildFn
    check_fn: Callable[[Mapping[str, Dim]], None] | None = None
    params_fn: ParamsFn | None = None
    adaptive_fn: AdaptiveFn | None = None
    budget_knobs: Mapping[str, BudgetKnob] = dataclasses.field(default_factory=dict)
    architecture: tuple[str, ...] | None = None
    weights_architecture_fn: WeightsArchitectureFn | None = None
    structure_cls: type[Structure] = Structure
    spec_domains: Mapping[str, Dim] = dataclasses.field(default_factory=dict)
    description: str = ""

    def domain(self, name: str) -> Dim:
        """The domain a spec may narrow dimension ``name`` from (``spec_domains``, or the
        default in ``dims``)."""
        return self.spec_domains.get(name, self.dims[name])

    def adaptive(self, config: Config) -> Adaptive | None:
        """What makes ``config`` adaptive (its knobs, operating points, cost model, loss
        terms), or None: a static config."""
        return None if self.adaptive_fn is None else self.adaptive_fn(config)

    def structure(self, config: Config) -> Structure:
        """What ``config``'s models are made of (its groups, what prunes, and how)."""
        return self.structure_cls(config)

    def architecture_of(self, config: Config) -> dict[str, Any]:
        """The values of ``config``'s architecture dimensions (what its weights fix)."""
        names = self.architecture if self.architecture is not None else tuple(self.dims)
        values = self.params_fn(config) if self.params_fn is not None else config.to_dict()
        return {name: values[name] for name in names if name in values}

    def architecture_of_weights(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
        """The architecture dimensions a state dict's tensor shapes fix (ConfigError if this
        family cannot read them from shapes)."""
        if self.weights_architecture_fn is None:
            raise ConfigError(f"space {self.name!r} cannot read an architecture from a bare "
                              "state dict: start from an export folder (nas export)")
        return self.weights_architecture_fn(shapes)

    def suggest(self, trial: TrialLike, dims: Mapping[str, Dim] | None = None) -> Config:
        return self.suggest_fn(trial, {**self.dims, **(dims or {})})

    def params(self, config: Config, dims: Mapping[str, Dim] | None = None) -> dict[str, Any]:
        """The inverse of :meth:`suggest`: the trial parameters (dimension name -> value) that
        make ``suggest(trial, dims)`` return ``config`` when the trial answers with them (an
        Optuna ``FixedTrial``, or a trial enqueued with them). Only the knobs the draw asks
        the trial for are given: not a Fixed dimension, nor a conditional knob whose condition
        is off. Raises ConfigError if no draw from ``dims`` gives ``config`` (a value outside
        its domain, or a field the draw does not set that way)."""
        if self.params_fn is None:
            raise ConfigError(f"space {self.name!r} has no params_fn: its configs cannot be "
                              "turned back into trial parameters")
        merged = {**self.dims, **(dims or {})}
        replay = Replay(self.params_fn(config))
        drawn = self.suggest_fn(replay, merged)
        for name, value in replay.asked.items():
            check_contains(name, merged[name], value)
        if drawn != config:
            ours, theirs = drawn.to_dict(), config.to_dict()
            name = next((k for k in ours if ours[k] != theirs[k]), next(iter(ours)))
            raise ConfigError(f"`{name}`={theirs[name]!r} cannot be drawn from these dims "
                              f"(a draw with the same knobs gives {ours[name]!r})")
        return replay.asked

    def from_params(self, params: Mapping[str, Any],
                    dims: Mapping[str, Dim] | None = None) -> Config:
        """The config ``suggest(trial, dims)`` draws when the trial answers with ``params``
        (what an enqueued trial will run); ConfigError if a knob is missing or the config
        is invalid."""
        return self.suggest_fn(Replay(params), {**self.dims, **(dims or {})})

    def check_dims(self, dims: Mapping[str, Dim]) -> None:
        """Raise ConfigError if narrowed ``dims`` could yield an invalid config."""
        if self.check_fn is not None:
            self.check_fn(dims)

    def build(self, config: Config, *, num_classes: int, in_chans: int = 3) -> nn.Module:
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"space {self.name!r} builds {self.config_cls.__name__}, "
                              f"got {type(config).__name__}")
        return self.build_fn(config, num_classes=num_classes, in_chans=in_chans)

    def config_from_dict(self, data: Mapping[str, Any]) -> Config:
        return self.config_cls.from_dict(dict(data))

    def summarize(self, config: Config) -> str:
        """What sets ``config`` apart from the family's default, e.g.
        ``embed_dims=32/64/96 depths=1/2/2``: short enough for a table cell."""
        base = self.config_cls().to_dict()
        parts = []
        for name, value in config.to_dict().items():
            if value != base.get(name):
                shown = "/".join(map(str, value)) if isinstance(value, list) else str(value)
                parts.append(f"{name}={shown}")
        return " ".join(parts) or "default"


_SPACES: dict[str, SearchSpace] = {}


def register(space: SearchSpace) -> SearchSpace:
    if space.name in _SPACES:
        raise ValueError(f"search space {space.name!r} is registered twice")
    _SPACES[space.name] = space
    return space


def get(name: str) -> SearchSpace:
    try:
        return _SPACES[name]
    except KeyError:
        raise ConfigError(f"space {name!r} is not known; known spaces: {names()}") from None


def names() -> list[str]:
    return sorted(_SPACES)


def structure_of(model: nn.Module) -> type[Structure]:
    """The structure class whose ``groups`` read ``model`` (TypeError if no family's does)."""
    for name in _SPACES:
        if isinstance(model, _SPACES[name].structure_cls.models):
            return _SPACES[name].structure_cls
    known = [m.__name__ for space in reversed(_SPACES.values())  # newest family first
             for m in space.structure_cls.models]
    expected = " or ".join(f"{'an' if n[0] in 'AEIOU' else 'a'} {n}" for n in known)
    raise TypeError(f"no structural groups known for {type(model).__name__}; "
                    f"expected {expected or 'a model of a family that declares a structure'}")


def group_layout(model: nn.Module) -> dict[str, Groups]:
    """The structural groups of a built ``model``, as its family's structure names them."""
    return structure_of(model).groups(model)
