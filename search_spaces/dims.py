"""Search dimensions: the domain of one architecture knob, and how a trial draws from it.

A family declares its knobs as ``{name: Dim}``; a search spec may narrow any of them (fix a
value, restrict the choices, shrink a range). ``Dim.suggest`` only calls ``trial.suggest_*``,
so suggestion stays pure define-by-run and Optuna records every drawn value under its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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


class Replay:
    """A :class:`TrialLike` that answers each ``suggest_*`` with the value given for its name
    (as Optuna's ``FixedTrial`` does) and notes the names asked, in order: how a config's
    parameters are found and replayed without importing Optuna."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)
        self.asked: dict[str, Any] = {}

    def _answer(self, name: str) -> Any:
        if name not in self.values:
            raise ConfigError(f"no value given for dimension {name!r}")
        self.asked[name] = self.values[name]
        return self.values[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._answer(name)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        return self._answer(name)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._answer(name)


def check_contains(name: str, dim: Dim, value: Any) -> None:
    """Raise ConfigError unless ``value`` lies in ``dim``'s domain (one of its choices; inside
    a range's bounds and on its grid), with the type rules of :func:`narrow`."""
    if _find(dim, value) is _MISSING:
        raise ConfigError(f"space.dims.{name}: value {value!r} is outside the domain; "
                          f"allowed: {_describe(dim)}")


def narrow(name: str, default: Dim, given: Any) -> Dim:
    """Parse a spec's value for dimension ``name`` and check it lies inside ``default``.

    A scalar fixes the knob, a list restricts its choices, a mapping {low, high[, step|log]}
    restricts a range. Types must match the domain's: a bool matches only a bool, a float
    never an int, and an int matches a float (stored as that float). Raises ConfigError
    naming the dimension, the value and what is allowed.
    """
    where = f"space.dims.{name}"
    if isinstance(given, dict):
        return _narrow_range(where, default, given)
    values = list(given) if isinstance(given, (list, tuple)) else [given]
    if not values:
        raise ConfigError(f"{where}: an empty list is not allowed")
    found = [_find(default, v) for v in values]
    for v, match in zip(values, found, strict=True):
        if match is _MISSING:
            raise ConfigError(f"{where}: value {v!r} ({type(v).__name__}) is not allowed; "
                              f"allowed: {_describe(default)}")
    return Fixed(found[0]) if len(found) == 1 else Choice(tuple(found))


_MISSING = object()


def _find(dim: Dim, v: Any) -> Any:
    """The domain's own value equal to ``v`` under the type rules of :func:`narrow` (a range's
    value as its kind: an int in a FloatRange becomes a float), or ``_MISSING``."""
    if isinstance(dim, (IntRange, FloatRange)):
        kind = int if isinstance(dim, IntRange) else float
        if not _is_kind(v, kind) or not dim.low <= v <= dim.high:
            return _MISSING
        if isinstance(dim, IntRange) and (v - dim.low) % dim.step:
            return _MISSING
        return kind(v)
    return next((o for o in dim.values() if _same(o, v)), _MISSING)


def _same(option: Any, v: Any) -> bool:
    """``v == option`` with the type rules of :func:`narrow`; lists/tuples element-wise."""
    if isinstance(option, tuple):
        return (isinstance(v, (list, tuple)) and len(v) == len(option)
                and all(_same(o, x) for o, x in zip(option, v, strict=True)))
    if isinstance(option, bool) or isinstance(v, bool):
        return type(option) is type(v) and option == v
    if isinstance(option, int) and isinstance(v, float):
        return False
    return not isinstance(v, (list, tuple)) and option == v


def _is_kind(v: Any, kind: type) -> bool:
    """Is ``v`` a number of ``kind`` (int: an int; float: an int or a float; never a bool)?"""
    allowed = (int,) if kind is int else (int, float)
    return isinstance(v, allowed) and not isinstance(v, bool)


def _narrow_range(where: str, default: Dim, given: dict[str, Any]) -> Dim:
    """{low, high[, step]} inside an IntRange, {low, high[, log]} inside a FloatRange."""
    if not isinstance(default, (IntRange, FloatRange)):
        raise ConfigError(f"{where}: a range {given} is not allowed; give one value or a "
                          f"list from {_describe(default)}")
    is_int = isinstance(default, IntRange)
    option = "step" if is_int else "log"
    if set(given) - {"low", "high", option} or "low" not in given or "high" not in given:
        raise ConfigError(f"{where}: a range needs keys low and high (optional {option}), "
                          f"got {given}")
    kind, low, high = (int if is_int else float), given["low"], given["high"]
    for key, v in (("low", low), ("high", high)):
        if not _is_kind(v, kind):
            raise ConfigError(f"{where}: {key}={v!r} must be "
                              f"{'an integer' if is_int else 'a number'}; allowed: "
                              f"{_describe(default)}")
    if not (default.low <= low <= high <= default.high):
        raise ConfigError(f"{where}: range [{low}, {high}] must lie inside "
                          f"[{default.low}, {default.high}] with low <= high")
    if is_int:
        step = given.get("step", default.step)
        return IntRange(low, high, _range_step(where, default, low, step))
    log = given.get("log", default.log)
    if not isinstance(log, bool) or (log and low <= 0):
        raise ConfigError(f"{where}: log={log!r} must be true or false (true needs low > 0)")
    return FloatRange(float(low), float(high), log)


def _range_step(where: str, default: IntRange, low: int, step: Any) -> int:
    """A step that keeps the narrowed range on the default's grid: a multiple of its step."""
    if not _is_kind(step, int) or step < 1 or step % default.step:
        raise ConfigError(f"{where}: step={step!r} must be an integer >= 1 and a multiple "
                          f"of {default.step}")
    if (low - default.low) % default.step:
        raise ConfigError(f"{where}: low={low} must be on the grid {default.low}, "
                          f"{default.low + default.step}, ... (step {default.step})")
    return step


def _describe(dim: Dim) -> str:
    if isinstance(dim, (IntRange, FloatRange)):
        kind = "integers" if isinstance(dim, IntRange) else "numbers"
        step = f" (step {dim.step})" if isinstance(dim, IntRange) and dim.step > 1 else ""
        return f"{kind} in [{dim.low}, {dim.high}]{step}"
    return f"one or more of {[list(v) if isinstance(v, tuple) else v for v in dim.values()]}"
