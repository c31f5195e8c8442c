"""The sections of a search spec that are plain settings, and the spec's error type.

Each section is a frozen dataclass validated in ``__post_init__``; a bad value raises one
:class:`SpecError` line naming the dotted field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from search_spaces.config import ConfigError
from trainers.inherit import MODE as INHERIT  # init.inherit's one value

# Keys of the trainers' settings that a trial decides for itself, not the spec.
PER_TRIAL = {"data": ("device", "load_test"), "train": ("device",)}
_SECTION_DEFAULTS = {"data": {"name": "fashion-mnist"}}
RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # not custom resources


class SpecError(ValueError):
    """One bad value in a spec: ``field: value ...: what is allowed``."""


def fail(field: str, value: Any, allowed: str) -> typing.NoReturn:
    raise SpecError(f"{field} = {value!r}: {allowed}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencySpec:
    """How latency is measured. ``node_resource``: a custom Ray resource that one node
    offers; every measurement of the study then runs there, one at a time, in one actor
    (nas/latency_target.py). None: each trial measures its own candidate. ``images``: how many
    validation images a data-dependent (adaptive) model is timed over, in batches of
    ``batch_size`` (its cost differs per image: the row keeps the mean over batches); a static
    model is timed on one batch, ``repeats`` times a round."""

    device: str = "cpu"
    batch_size: int = 16
    images: int = 256
    threads: int = 1
    dtype: str = "float32"
    warmup: int = 5
    repeats: int = 20
    rounds: int = 3
    runtime: str = "torch"  # or onnxruntime: static candidates timed as ONNX graphs
    node_resource: str | None = None

    def __post_init__(self) -> None:
        if self.node_resource is not None and (
                not self.node_resource.strip() or self.node_resource in RAY_RESOURCES):
            fail("latency.node_resource", self.node_resource, "must name a custom resource "
                 "that one node offers (ray start --resources='{\"NAME\": 1}')")
        if self.device not in ("cpu", "cuda"):
            fail("latency.device", self.device, "allowed: cpu, cuda")
        if self.runtime not in ("torch", "onnxruntime"):
            fail("latency.runtime", self.runtime, "allowed: torch, onnxruntime")
        if self.runtime == "onnxruntime" and self.dtype != "float32":
            fail("latency.dtype", self.dtype, "onnxruntime latency is measured in float32")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            fail("latency.dtype", self.dtype, "allowed: float32, bfloat16, float16")
        for name in ("batch_size", "images", "threads", "repeats", "rounds"):
            at_least(f"latency.{name}", getattr(self, name), 1)
        at_least("latency.warmup", self.warmup, 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetSpec:
    """Operating points of adaptive candidates: ``points`` per trained model (point 0 its
    trained knob values), each a results row. ``limits``: the far end of a budget knob's
    ladder (knob name -> value; the family's default where not given), checked against the
    space's budget knobs by the spec."""

    points: int = 5
    limits: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        at_least("budget.points", self.points, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitSpec:
    """Warm start: ``weights`` every candidate starts from (an export folder or a
    .safetensors state dict; None = trained from scratch) and ``fresh``, name patterns
    (fnmatch) of tensors not taken from them (e.g. ``head.*`` for other classes).

    ``inherit: importance``: the weights are a trained parent (an export folder) that bounds
    the architecture instead of fixing it; each candidate starts as the parent cut to it by
    the parent's Taylor importance (trainers/inherit.py), computed once per study on
    ``importance_batches`` training batches (nas/parent.py)."""

    weights: str | None = None
    fresh: tuple[str, ...] = ()
    inherit: str | None = None
    importance_batches: int = 16

    def __post_init__(self) -> None:
        if self.fresh and self.weights is None:
            fail("init.fresh", list(self.fresh), "needs init.weights")
        if self.inherit is not None and self.inherit != INHERIT:
            fail("init.inherit", self.inherit, f"allowed: {INHERIT!r} (or leave it out: the "
                 "weights then fix the architecture)")
        if self.inherit is not None and self.weights is None:
            fail("init.inherit", self.inherit, "needs init.weights (the parent's export folder)")
        at_least("init.importance_batches", self.importance_batches, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportanceSpec:
    """Taylor importance of every trained candidate: ``batches`` forward/backward passes
    over training batches after the last epoch (0 = off)."""

    batches: int = 4

    def __post_init__(self) -> None:
        at_least("importance.batches", self.batches, 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruningSpec:
    """Pruned variants added to the study after the search: the ``best`` trials of the
    front, each pruned to ``keep`` of its prunable widths and fine-tuned ``finetune_epochs``."""

    best: int = 0
    keep: float = 0.5
    finetune_epochs: int = 1

    def __post_init__(self) -> None:
        at_least("pruning.best", self.best, 0)
        if not 0 < self.keep <= 1:
            fail("pruning.keep", self.keep, "must be in (0, 1]")
        at_least("pruning.finetune_epochs", self.finetune_epochs, 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuidanceSpec:
    """Importance-guided proposals: once ``after`` trials completed, up to ``proposals``
    narrower configs derived from the front's trials are enqueued (0 = off)."""

    proposals: int = 0
    after: int = 4

    def __post_init__(self) -> None:
        at_least("guidance.proposals", self.proposals, 0)
        at_least("guidance.after", self.after, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HalvingSpec:
    """Successive halving of ``scheduler: asha`` and ``moasha``: trials are compared at
    epochs ``grace_period * reduction_factor**k`` up to ``max_t`` (None: ``train.epochs``,
    filled in by the spec, which also checks both against ``train.epochs``); about
    ``1/reduction_factor`` of the trials reaching a rung continue."""

    reduction_factor: int = 3
    grace_period: int = 1
    max_t: int | None = None

    def __post_init__(self) -> None:
        at_least("halving.reduction_factor", self.reduction_factor, 2)
        at_least("halving.grace_period", self.grace_period, 1)
        if self.max_t is not None and self.max_t < self.grace_period:
            fail("halving.max_t", self.max_t,
                 f"must be >= halving.grace_period ({self.grace_period})")

    def resolved(self, epochs: int) -> HalvingSpec:
        """With ``max_t`` filled in, checked against the trials' ``epochs``."""
        if self.grace_period > epochs:
            fail("halving.grace_period", self.grace_period,
                 f"must be <= train.epochs ({epochs}): no rung would be reached")
        if self.max_t is not None and self.max_t > epochs:
            fail("halving.max_t", self.max_t, f"must be <= train.epochs ({epochs})")
        return dataclasses.replace(self, max_t=self.max_t or epochs)


SAMPLERS = ("nsga2", "tpe", "random")
# URI schemes Ray Tune's storage resolves (through pyarrow.fs); anything else fails in Ray
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage(value: str | None) -> None:
    """``storage``: None (the study folder), a local path, or a URI of a scheme in
    :data:`STORAGE_SCHEMES` with a location after it. Checked before anything is written;
    whether the location can be reached is checked when the search starts."""
    if value is None:
        return
    allowed = ("a local path, or a URI such as s3://bucket/path, gs://bucket/path or "
               "file:///shared/mount/path (schemes: " + ", ".join(STORAGE_SCHEMES) + ")")
    if not value.strip():
        fail("storage", value, f"must be {allowed}")
    scheme, sep, rest = value.partition("://")
    if sep and (scheme.lower() not in STORAGE_SCHEMES or not rest.strip("/")):
        fail("storage", value, f"cannot be used: {allowed}")
    if sep and scheme.lower() == "file" and not rest.startswith("/"):
        fail("storage", value, "a file:// URI needs an absolute path: file:///shared/path")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    """``name``: one of :data:`SAMPLERS` (nas/samplers.py makes each)."""

    name: str = "nsga2"
    seed: int = 0
    population_size: int = 8

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            fail("sampler.name", self.name, f"allowed: {', '.join(SAMPLERS)}")
        at_least("sampler.population_size", self.population_size, 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpus > 0:
            fail("resources.cpus", self.cpus, "must be a number > 0 (fractions allowed)")
        if not 0 <= self.gpus <= 1:
            fail("resources.gpus", self.gpus, "must be in [0, 1]: a trial trains on at most "
                                              "one GPU (fractions share one)")


def at_least(field: str, value: float, low: float) -> None:
    if value < low:
        fail(field, value, f"must be >= {low}")


def parse_section(cls: type, raw: Any, prefix: str) -> Any:
    """The section ``prefix`` of a spec (a mapping) as its settings class ``cls``; unknown
    keys, wrong types and the class's own rules are one SpecError naming the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        fail(prefix, raw, "must be a mapping of settings")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in PER_TRIAL.get(prefix, ())]
    values = dict(_SECTION_DEFAULTS.get(prefix, {}))
    for key, value in raw.items():
        if key not in known:
            fail(f"{prefix}.{key}", value, f"unknown key; allowed keys: {known}")
        values[key] = typed(f"{prefix}.{key}", hints[key], value)
    try:
        return cls(**values)
    except ConfigError as err:  # the trainers' rule, said with the spec's field path
        key = err.field or ""
        raise SpecError(f"{prefix}.{key} = {values.get(key)!r}: {err}") from None


def typed(field: str, hint: Any, value: Any) -> Any:
    """Check a value against its annotation: int, float, str, bool, optional, a tuple of
    strings (a YAML list) or a mapping of names to numbers."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(field, value, "must be a list of strings")
        return tuple(value)
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in value.items()):
            fail(field, value, "must be a mapping of names to numbers")
        return {k: float(v) for k, v in value.items()}
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = [a for a in typing.get_args(hint) if a is not type(None)][0] if optional else hint
    if value is None:
        if optional:
            return None
        fail(field, value, f"must be a {base.__name__}, not null")
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if base is bool and isinstance(value, bool):
        return value
    fail(field, value, f"must be a {base.__name__}{' or null' if optional else ''}")
