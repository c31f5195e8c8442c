"""Search specs: YAML (safe load) -> a validated, frozen :class:`SearchSpec`.

Every mistake is reported as one :class:`SpecError` line naming the field (dotted path), the
value and what is allowed, before any Ray or Optuna work starts. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import search_spaces
from search_spaces.config import ConfigError
from search_spaces.dims import Dim, Fixed, narrow
from trainers.data import DataSettings, load_data, native_img_size
from trainers.loop import FitSettings

from .init import bound_architecture, check_init_weights, fix_architecture
from .plugins import load_plugins, resolved
from .sections import (
    PER_TRIAL,
    BudgetSpec,
    GuidanceSpec,
    HalvingSpec,
    ImportanceSpec,
    InitSpec,
    LatencySpec,
    PruningSpec,
    ResourcesSpec,
    SamplerSpec,
    SpecError,
    at_least,
    check_storage,
    fail,
    parse_section,
    typed,
)

# What a trial reports and the results table keeps, beside the per-epoch history.
METRICS = ("accuracy", "val_loss", "train_loss", "latency_ms", "latency_p90_ms",
           "latency_spread", "macs", "params", "full_macs")
OBJECTIVES = ("accuracy", "latency_ms", "macs", "params")
CONSTRAINABLE = ("accuracy", "val_loss", "latency_ms", "latency_p90_ms", "macs", "params")
# Known before training: a candidate that breaks a constraint on these is not trained. For
# an adaptive candidate only params are: its MACs and latency depend on its data.
COSTS = ("latency_ms", "latency_p90_ms", "macs", "params")
STATIC_COSTS = ("params",)


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "max" or "min"

    @property
    def label(self) -> str:
        return f"{self.metric}:{self.direction}"


@dataclasses.dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def holds(self, value: float) -> bool:
        return {"<=": value <= self.bound, ">=": value >= self.bound,
                "<": value < self.bound, ">": value > self.bound}[self.op]

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 when the constraint holds, else how far it is off."""
        if self.holds(value):
            return 0.0
        return abs(value - self.bound) + (1e-9 if self.op in ("<", ">") else 0.0)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpaceSpec:
    name: str
    dims: Mapping[str, Dim]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSpec:
    name: str
    space: SpaceSpec
    data: DataSettings
    train: FitSettings
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    sampler: SamplerSpec
    latency: LatencySpec
    resources: ResourcesSpec
    budget: BudgetSpec = dataclasses.field(default_factory=BudgetSpec)
    importance: ImportanceSpec = dataclasses.field(default_factory=ImportanceSpec)
    pruning: PruningSpec = dataclasses.field(default_factory=PruningSpec)
    guidance: GuidanceSpec = dataclasses.field(default_factory=GuidanceSpec)
    init: InitSpec = dataclasses.field(default_factory=InitSpec)
    halving: HalvingSpec = dataclasses.field(default_factory=HalvingSpec)
    trials: int = 8
    concurrent_trials: int = 1
    scheduler: str = "none"
    results_dir: str = "results"
    ray_address: str | None = None
    storage: str | None = None
    plugins: tuple[str, ...] = ()  # modules that register more families (nas/plugins.py)
    retries: int = 2  # a trial whose worker or node died is retried from its checkpoint

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.direction for o in self.objectives]



# ---------------------------------------------------------------- parsing raw YAML values

_TOP = {"name", "space", "data", "train", "objectives", "constraints", "sampler", "latency",
        "resources", "budget", "importance", "pruning", "guidance", "init", "halving",
        "trials", "concurrent_trials", "scheduler", "results_dir", "ray_address", "storage",
        "plugins", "retries"}
_SECTIONS = {"data": DataSettings, "train": FitSettings, "sampler": SamplerSpec,
             "latency": LatencySpec, "resources": ResourcesSpec, "budget": BudgetSpec,
             "importance": ImportanceSpec, "pruning": PruningSpec, "guidance": GuidanceSpec,
             "init": InitSpec, "halving": HalvingSpec}
_SCALARS = {"trials": int, "concurrent_trials": int, "scheduler": str, "results_dir": str,
            "ray_address": str | None, "storage": str | None,  # top-level values
            "plugins": tuple[str, ...], "retries": int}
DEFAULT_OBJECTIVES = ("accuracy:max", "latency_ms:min")
SCHEDULERS = ("none", "asha", "moasha")  # moasha ranks on every objective (nas/moasha.py)
_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_objectives(raw: Any, field: str = "objectives") -> tuple[Objective, ...]:
    """``["accuracy:max", "latency_ms"]`` -> Objectives; a bare name takes its usual way
    (accuracy up, costs down). Used for specs and for ``nas pareto --objectives``."""
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)) or not raw:
        fail(field, raw, "must be a non-empty list like [accuracy:max, latency_ms:min]")
    out: list[Objective] = []
    for item in raw:
        if isinstance(item, Objective):
            out.append(item)
            continue
        metric, _, direction = str(item).partition(":")
        direction = direction or ("max" if metric == "accuracy" else "min")
        if metric not in OBJECTIVES or direction not in ("max", "min"):
            fail(field, item, f"each must be METRIC[:max|min] with METRIC in "
                              f"{list(OBJECTIVES)}")
        if metric in [o.metric for o in out]:
            fail(field, item, "each metric may appear once")
        out.append(Objective(metric, direction))
    return tuple(out)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _constraints(raw: Any) -> tuple[Constraint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        fail("constraints", raw, "must be a list like ['latency_ms <= 5']")
    out = []
    for item in raw:
        m = _CONSTRAINT.match(str(item))
        bound = _number(m.group(3)) if m else None
        if not m or m.group(1) not in CONSTRAINABLE or bound is None:
            fail("constraints", item, f"each must be 'METRIC OP NUMBER' with METRIC in "
                                      f"{list(CONSTRAINABLE)} and OP in <=, >=, <, >")
        out.append(Constraint(m.group(1), m.group(2), bound))
    return tuple(out)


def _space(raw: Any, img_size: int, init: InitSpec) -> SpaceSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or "name" not in raw:
        fail("space", raw, f"must be a mapping with a name from {search_spaces.names()}")
    extra = set(raw) - {"name", "dims"}
    if extra:
        key = sorted(extra)[0]
        fail(f"space.{key}", raw[key], "unknown key; allowed keys: ['name', 'dims']")
    if raw["name"] not in search_spaces.names():
        fail("space.name", raw["name"], f"allowed: {search_spaces.names()}")
    space = search_spaces.get(raw["name"])
    given = raw.get("dims") or {}
    if not isinstance(given, Mapping):
        fail("space.dims", given, "must be a mapping of dimension: value | list | range")
    if "img_size" in given:
        fail("space.dims.img_size", given["img_size"], "set data.img_size instead")
    dims: dict[str, Dim] = {"img_size": Fixed(img_size)}
    for key, value in given.items():
        if key not in space.dims:
            fail(f"space.dims.{key}", value, f"unknown dimension; allowed: {sorted(space.dims)}")
        try:
            dims[key] = narrow(key, space.domain(key), value)
        except ConfigError as err:
            raise SpecError(str(err)) from None
    if init.inherit is not None:
        dims = bound_architecture(space, dims, init)
    elif init.weights is not None:
        dims = fix_architecture(space, dims, init)
    try:
        space.check_dims({**space.dims, **dims})
    except ConfigError as err:
        raise SpecError(f"space.dims: {err}") from None
    return SpaceSpec(name=space.name, dims=dims)


def _check_budget(space: SpaceSpec, budget: BudgetSpec) -> None:
    """Each ``budget.limits`` entry must be a budget knob of the space, inside the knob's
    domain, and beyond every value the knob may be trained with (the ladder runs from the
    trained value to the limit, one way)."""
    fam = search_spaces.get(space.name)
    for name, limit in budget.limits.items():
        knob = fam.budget_knobs.get(name)
        if knob is None:
            fail(f"budget.limits.{name}", limit, f"not a budget knob of space {fam.name!r}; "
                 f"its knobs: {sorted(fam.budget_knobs)}")
        why = knob.check_limit(limit)
        if why:
            fail(f"budget.limits.{name}", limit, why)
        dim = {**fam.dims, **space.dims}.get(name)
        trained = [v for v in dim.values() if v is not None] if dim else []
        if any(v == limit or (v < limit) != (v < knob.limit) for v in trained):
            fail(f"budget.limits.{name}", limit, f"must lie beyond every trained value on "
                 f"the side of the default limit {knob.limit:g} (space.dims.{name}: "
                 f"{trained})")


def _check_scheduler(scheduler: str, objectives: tuple[Objective, ...]) -> bool:
    """Whether the spec's scheduler stops trials early (and so reads ``halving``)."""
    if scheduler not in SCHEDULERS:
        fail("scheduler", scheduler, f"allowed: {', '.join(SCHEDULERS)}")
    if scheduler != "none" and "accuracy" not in [o.metric for o in objectives]:
        fail("scheduler", scheduler, "needs accuracy among the objectives (the costs do not "
                                     "change with training: rungs would rank on them alone)")
    return scheduler != "none"


def _check_latency(sections: Mapping[str, Any]) -> None:
    latency = sections["latency"]
    if latency.device == "cuda" and sections["resources"].gpus <= 0 and not (
            latency.node_resource):  # a latency target holds a GPU of its own
        fail("latency.device", "cuda", "needs resources.gpus > 0 (or latency.node_resource)")
    if latency.node_resource and sections["pruning"].best > 0:
        fail("pruning.best", sections["pruning"].best, "cannot be used with "
             "latency.node_resource: pruned variants are measured in the driver, after the "
             "search, not on the latency target")


def _check_needs_importance(sections: Mapping[str, Any]) -> None:
    """Guided proposals and pruning read the trials' importance scores."""
    if sections["importance"].batches > 0:
        return
    if sections["guidance"].proposals > 0:
        fail("guidance.proposals", sections["guidance"].proposals,
             "needs importance.batches > 0 (proposals come from the trials' importance)")
    if sections["pruning"].best > 0:
        fail("pruning.best", sections["pruning"].best,
             "needs importance.batches > 0 (pruning reads the trials' importance)")


def from_dict(raw: Mapping[str, Any]) -> SearchSpec:
    """Validate a spec given as a mapping (e.g. parsed YAML) into a :class:`SearchSpec`."""
    if not isinstance(raw, Mapping):
        fail("spec", raw, "must be a YAML mapping")
    for key in raw:
        if key not in _TOP:
            fail(key, raw[key], f"unknown key; allowed keys: {sorted(_TOP)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        fail("name", name, "must be a name of letters, digits, '_', '.', '-'")
    sections = {k: parse_section(cls, raw.get(k), k) for k, cls in _SECTIONS.items()}
    if sections["init"].weights is not None:  # trials run elsewhere: an absolute path
        weights = str(Path(sections["init"].weights).expanduser().resolve())
        sections["init"] = dataclasses.replace(sections["init"], weights=weights)
    top = {k: typed(k, hint, raw[k]) for k, hint in _SCALARS.items() if k in raw}
    if "plugins" in top:  # before the space is looked up: they may register it
        top["plugins"] = resolved(top["plugins"])
        load_plugins(top["plugins"])
    at_least("trials", top.get("trials", 8), 1)
    at_least("concurrent_trials", top.get("concurrent_trials", 1), 1)
    at_least("retries", top.get("retries", 0), 0)
    check_storage(top.get("storage"))
    objectives = parse_objectives(raw.get("objectives") or DEFAULT_OBJECTIVES)
    if _check_scheduler(top.get("scheduler", "none"), objectives):
        sections["halving"] = sections["halving"].resolved(sections["train"].epochs)
    _check_latency(sections)
    _check_needs_importance(sections)
    data = sections["data"]
    space = _space(raw.get("space", "efficientvit"), data.img_size or native_img_size(data.name),
                   sections["init"])
    _check_budget(space, sections["budget"])
    return SearchSpec(name=name, space=space, objectives=objectives,
                      constraints=_constraints(raw.get("constraints")),
                      **sections, **top)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw spec mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            fail("--set", item, "must be KEY=VALUE, e.g. train.epochs=3")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                fail(f"--set {key}", text, f"{part} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError:
            fail(f"--set {key}", text, "the value is not valid YAML (quote strings, close lists)")
    return raw


def load(path: str | Path, overrides: list[str] | None = None, **top: Any) -> SearchSpec:
    """Read a YAML spec file, apply ``--set`` overrides and top-level values, validate."""
    path = Path(path)
    if not path.is_file():
        fail("spec", str(path), "no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        fail("spec", str(path), f"is not valid YAML{where}")
    if not isinstance(raw, dict):
        fail("spec", str(path), "must hold a YAML mapping")
    raw = apply_overrides(raw, overrides or [])
    raw.update({k: v for k, v in top.items() if v is not None})
    return from_dict(raw)


def to_yaml(spec: SearchSpec) -> str:
    """The resolved spec as YAML (defaults filled in), as written into the study folder."""
    out: dict[str, Any] = {"name": spec.name}
    out["space"] = {"name": spec.space.name,
                    "dims": {k: d.to_spec() for k, d in spec.space.dims.items()
                             if k != "img_size"}}  # img_size comes from data.img_size
    for key in _SECTIONS:
        section = dataclasses.asdict(getattr(spec, key))
        out[key] = {k: v for k, v in section.items() if k not in PER_TRIAL.get(key, ())}
    out["objectives"] = [o.label for o in spec.objectives]
    out["constraints"] = [str(c) for c in spec.constraints]
    for key in _SCALARS:
        out[key] = getattr(spec, key)
    return yaml.safe_dump(_plain(out), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_data(spec: SearchSpec) -> None:
    """Load the spec's data once (in the driver, before Ray starts; before ``nas prune``
    works), so that a missing dataset or an impossible subset size is one clear error, not a
    failure in every trial; then check that a candidate built for it takes the ``init``
    weights."""
    settings = spec.data
    try:
        if settings.name.startswith("folder:"):
            root = Path(settings.name.removeprefix("folder:")).expanduser()
            if not (root / "train").is_dir():
                raise FileNotFoundError(f"no folder {root / 'train'} (expected "
                                        "PATH/train/<class>/<images>)")
            classes, chans = sum(p.is_dir() for p in (root / "train").iterdir()), 3
        else:
            data = load_data(settings)
            classes, chans = data.num_classes, data.in_chans
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SpecError(f"data.name = {settings.name!r}: {err}") from None
    check_init_weights(spec.space.name, spec.space.dims, spec.init, num_classes=classes,
                       in_chans=chans)
