"""Frozen, validated, JSON-round-tripping configs: the base of every family's config."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value breaks a rule. The message names the field, the value and the rule;
    ``field`` is the field's name where one field is at fault (else None)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base for family configs: ``@dataclass(frozen=True, kw_only=True)`` of primitives/tuples.

    Subclasses validate in ``__post_init__`` (call :meth:`check`) and may define ``KIND`` (the
    family name) so that a stored dict says which family it belongs to.
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: tuples -> lists, and ints in ``float`` fields -> floats (so that
        ``ratio=2`` and ``ratio=2.0``, which compare equal, also have one :meth:`key`)."""
        hints = _type_hints(type(self))
        return {f.name: _plain(_coerce(hints[f.name], getattr(self, f.name)))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown field(s) {unknown}; allowed: {sorted(known)}"
            )
        hints = _type_hints(cls)
        return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def key_fields(self) -> tuple[str, ...]:
        """The fields :meth:`key` hashes: by default every field. A config whose fields
        matter only under a condition (a token policy's) may leave out those that do not, so
        that adding such fields changes no existing config's key."""
        return tuple(f.name for f in dataclasses.fields(self))

    def key_data(self) -> dict[str, Any]:
        """What :meth:`key` hashes: the :meth:`to_dict` values of the :meth:`key_fields`."""
        data = self.to_dict()
        return {name: data[name] for name in self.key_fields()}

    def key(self) -> str:
        """A stable 12-hex-digit hash of the config's content (same config, same key): of
        :meth:`key_data`, which with every field is the config's :meth:`to_json`."""
        return hashlib.sha1(_canonical(self.key_data()).encode()).hexdigest()[:12]

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def check(ok: bool, message: str, *, field: str | None = None) -> None:
    """Raise :class:`ConfigError` with ``message`` (about ``field``) unless ``ok``."""
    if not ok:
        raise ConfigError(message, field=field)


def check_int(name: str, value: object, low: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int (not a bool) and >= ``low``."""
    check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
          f"`{name}`={value!r} must be an integer >= {low}", field=name)


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _coerce(hint: Any, value: Any) -> Any:
    """Turn JSON values back into the annotated type: lists -> tuples, ints -> floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        sequence = isinstance(value, (list, tuple))  # the tuple member, or a scalar one
        fits = [a for a in args if (typing.get_origin(a) is tuple) == sequence]
        return _coerce(fits[0], value) if len(fits) == 1 else value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
