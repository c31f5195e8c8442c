"""The registry of search spaces: a family's configs, presets, suggest and build, by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .config import Config, ConfigError
from .dims import Dim, TrialLike

SuggestFn = Callable[[TrialLike, Mapping[str, Dim]], Config]
BuildFn = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A family of models and the knobs a search may turn.

    ``dims`` are the default domains of the knobs; ``suggest(trial, dims)`` draws one config
    (defaults to ``self.dims``; it only calls ``trial.suggest_*``); ``build(config, *,
    num_classes, in_chans=3)`` is a pure function returning an ``nn.Module``.
    """

    name: str
    config_cls: type[Config]
    presets: Mapping[str, Config]
    dims: Mapping[str, Dim]
    suggest_fn: SuggestFn
    build_fn: BuildFn
    check_fn: Callable[[Mapping[str, Dim]], None] | None = None
    description: str = ""

    def suggest(self, trial: TrialLike, dims: Mapping[str, Dim] | None = None) -> Config:
        return self.suggest_fn(trial, {**self.dims, **(dims or {})})

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
