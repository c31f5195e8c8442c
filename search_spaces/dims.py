"""Search dimensions: the domain of one architecture knob, and how a trial draws from it.

A family declares its knobs as ``{name: Dim}``; a search spec may narrow any of them (fix a
value, restrict the choices, shrink a range). ``Dim.suggest`` only calls ``trial.suggest_*``,
so suggestion stays pure define-by-run and Optuna records every drawn value under its name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from .config import ConfigError


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` a suggest function uses (no optuna import here)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclasses.dataclass(frozen=True)
class Fixed:
    value: Any

    def suggest(self, trial: TrialLike, name: str) -> Any:
        return self.value

    def values(self) -> tuple[Any, ...]:
        return (self.value,)

    def to_spec(self) -> Any:
        return self.value


@dataclasses.dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def suggest(self, trial: TrialLike, name: str) -> Any:
        return trial.suggest_categorical(name, self.options)

    def values(self) -> tuple[Any, ...]:
        return self.options

    def to_spec(self) -> Any:
        return list(self.options)


@dataclasses.dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1

    def suggest(self, trial: TrialLike, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step)

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1, self.step))

    def to_spec(self) -> Any:
        return {"low": self.low, "high": self.high, "step": self.step}


@dataclasses.dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: TrialLike, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def values(self) -> tuple[float, ...]:
        return (self.low, self.high)

    def to_spec(self) -> Any:
        return {"low": self.low, "high": self.high, "log": self.log}


Dim = Fixed | Choice | IntRange | FloatRange


def narrow(name: str, default: Dim, given: Any) -> Dim:
    """Parse a spec's value for dimension ``name`` and check it lies inside ``default``.

    A scalar fixes the knob, a list restricts its choices, a mapping {low, high[, step|log]}
    restricts a range. Raises ConfigError naming the dimension, the value and what is allowed.
    """
    where = f"space.dims.{name}"
    if isinstance(given, dict):
        if not isinstance(default, (IntRange, FloatRange)):
            raise ConfigError(f"{where}: a range {given} is not allowed; give one value or a "
                              f"list from {list(default.values())}")
        extra = set(given) - {"low", "high", "step", "log"}
        if extra or "low" not in given or "high" not in given:
            raise ConfigError(f"{where}: a range needs keys low and high (optional step/log), "
                              f"got {given}")
        low, high = given["low"], given["high"]
        if not (default.low <= low <= high <= default.high):
            raise ConfigError(f"{where}: range [{low}, {high}] must lie inside "
                              f"[{default.low}, {default.high}] with low <= high")
        if isinstance(default, IntRange):
            return IntRange(int(low), int(high), int(given.get("step", default.step)))
        return FloatRange(float(low), float(high), bool(given.get("log", default.log)))
    values = list(given) if isinstance(given, (list, tuple)) else [given]
    if not values:
        raise ConfigError(f"{where}: an empty list is not allowed")
    for v in values:
        if not _allowed(default, v):
            raise ConfigError(f"{where}: value {v!r} is not allowed; allowed: "
                              f"{_describe(default)}")
    values = [tuple(v) if isinstance(v, list) else v for v in values]
    return Fixed(values[0]) if len(values) == 1 else Choice(tuple(values))


def _allowed(dim: Dim, v: Any) -> bool:
    if isinstance(v, list):
        v = tuple(v)
    if isinstance(dim, (IntRange, FloatRange)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if isinstance(dim, IntRange) and int(v) != v:
            return False
        return dim.low <= v <= dim.high
    return v in dim.values()


def _describe(dim: Dim) -> str:
    if isinstance(dim, (IntRange, FloatRange)):
        kind = "integers" if isinstance(dim, IntRange) else "numbers"
        return f"{kind} in [{dim.low}, {dim.high}]"
    return f"one or more of {[list(v) if isinstance(v, tuple) else v for v in dim.values()]}"
