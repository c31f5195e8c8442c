"""Importance-guided proposals: narrower configs where a front trial's Taylor importance says
its capacity is wasted (PAPERS.md section 1: EfficientViT's pruning of DeiT and Swin found
Q/K far less important than V, and late stages wasteful).

A trained trial carries the summary ``imp_{component}_keep90_s{stage}`` of its importance
(trainers.importance.summarize): the fraction of that component's channels (heads, blocks)
which keeps 90% of its importance. Where a trial on the current Pareto front needs only a
fraction f of, say, its Q/K channels, the proposal is the same config with the smallest
Q/K width of the spec's domain that is at least f times the current one (and below it).
One proposal per (front trial, component); every proposal is a config that a draw from the
spec's dims can give, and none repeats a config the study already holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

import search_spaces
from search_spaces.config import Config, ConfigError
from search_spaces.dims import Dim, FloatRange
from search_spaces.structure import Knob

from .pareto import pareto_front
from .spec import SearchSpec

COVERAGE = 90  # the summary read: channels that keep 90% of a component's importance
_EPS = 1e-9


def kept_fraction(row: Mapping[str, Any], knob: Knob) -> float:
    """The fraction of the knob's component that keeps COVERAGE% of its importance in
    ``row`` (NaN when the row has no such summary)."""
    prefix = f"imp_{knob.component}_keep{COVERAGE}_s"
    if knob.stage is not None:
        names = [f"{prefix}{knob.stage}"]
    else:
        names = [k for k in row if k.startswith(prefix)]
    values = [float(row[k]) for k in names if _number(row.get(k))]
    return max(values) if values else math.nan


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def narrower(dim: Dim, current: float, keep: float) -> Any:
    """The smallest value of ``dim``'s domain at or above ``keep * current`` and below
    ``current`` (for a float range: that bound itself, clipped to the range); None if none."""
    target = keep * current
    if isinstance(dim, FloatRange):
        value = max(dim.low, target)
        return value if value < current - _EPS else None
    options = [v for v in dim.values()
               if _number(v) and target - _EPS <= v < current - _EPS]
    return min(options, default=None)


def narrowed_params(row: Mapping[str, Any], config: Config, params: Mapping[str, Any],
                    dims: Mapping[str, Dim], knobs: Iterable[Knob]) -> tuple[dict, float]:
    """``params`` with every knob of ``knobs`` the row's summary says is wasteful narrowed;
    and the smallest kept share (new / current size) among the changed knobs (1.0: none)."""
    out, share = dict(params), 1.0
    for knob in knobs:
        if knob.dim not in params:  # fixed by the spec, or not drawn for this config
            continue
        if knob.applies is not None and not knob.applies(config):
            continue
        keep = kept_fraction(row, knob)
        value = params[knob.dim]
        current = knob.none_means(config) if value is None and knob.none_means else value
        if not _number(keep) or not _number(current):
            continue
        new = narrower(dims[knob.dim], current, keep)
        if new is not None:
            out[knob.dim] = new
            share = min(share, new / current)
    return out, share


def trial_proposals(row: Mapping[str, Any], spec: SearchSpec) -> list[tuple[float, Config, str]]:
    """(kept share, config, origin) per component the row's summary says is wasteful."""
    space = search_spaces.get(spec.space.name)
    dims = {**space.dims, **spec.space.dims}
    config = space.config_from_dict(json.loads(row["config"]))
    try:
        params = space.params(config, dims)
    except ConfigError:  # not a draw of this spec (e.g. a pruned variant): nothing to narrow
        return []
    knobs = space.structure(config).guidance  # the family's: which dim sizes what
    out = []
    for component in dict.fromkeys(k.component for k in knobs):
        chosen = [k for k in knobs if k.component == component]
        new_params, share = narrowed_params(row, config, params, dims, chosen)
        if share >= 1.0:
            continue
        try:
            proposal = space.from_params(new_params, dims)
            space.params(proposal, dims)  # inside the spec's dims, or an error
        except ConfigError:
            continue
        out.append((share, proposal, f"proposal:from={row['trial']}:{component}"))
    return out


def front_rows(rows: pd.DataFrame, spec: SearchSpec) -> pd.DataFrame:
    """One row per trial on the Pareto front of the spec's objectives, among the complete
    trials that meet the spec's constraints; best first by the first objective."""
    needed = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
    if rows.empty or not {"status", "config", *needed} <= set(rows.columns):
        return rows.iloc[:0]
    ok = rows[rows["status"] == "complete"]
    for c in spec.constraints:
        ok = ok[[_number(v) and c.holds(float(v)) for v in ok[c.metric]]]
    front = pareto_front(ok, list(spec.objectives))
    return front.drop_duplicates(subset=["trial"])


def propose(rows: pd.DataFrame, spec: SearchSpec, n: int) -> list[tuple[Config, str]]:
    """Up to ``n`` (config, origin) proposals from the front trials of ``rows`` (a results
    frame: trial, status, config JSON, objectives, ``imp_*`` summaries): round-robin over
    the front (best first), each trial's components most wasteful first. None repeats a
    config of ``rows`` (any status) or another proposal."""
    space = search_spaces.get(spec.space.name)
    seen = {space.config_from_dict(json.loads(c)).key()
            for c in rows.get("config", pd.Series(dtype=object)).dropna()}
    queues = []
    for row in front_rows(rows, spec).to_dict("records"):
        ranked = sorted(trial_proposals(row, spec), key=lambda p: p[0])
        queues.append([(config, origin) for _, config, origin in ranked])
    out: list[tuple[Config, str]] = []
    while len(out) < n and any(queues):
        for queue in queues:
            while queue and len(out) < n:
                config, origin = queue.pop(0)
                if config.key() not in seen:
                    seen.add(config.key())
                    out.append((config, origin))
                    break
    return out


_STATUS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "stopped",
           TrialState.FAIL: "error", TrialState.RUNNING: "running",
           TrialState.WAITING: "waiting"}


def study_rows(trials: Iterable[FrozenTrial], spec: SearchSpec) -> pd.DataFrame:
    """A results frame from Optuna trials (what ``propose`` reads): trial, status, config,
    and every user attribute (the recorded metrics, ``imp_*`` summaries, origin). A waiting
    (enqueued) trial's config comes from its fixed parameters."""
    space = search_spaces.get(spec.space.name)
    rows = []
    for t in trials:
        params = t.params or t.system_attrs.get("fixed_params") or {}
        try:
            config = space.from_params(params, spec.space.dims)
        except ConfigError:  # not fully drawn yet
            continue
        status = _STATUS.get(t.state, "error")
        if status == "complete" and t.user_attrs.get("infeasible"):
            status = "infeasible"
        rows.append({**t.user_attrs, "trial": t.number, "status": status,
                     "config": config.to_json()})
    return pd.DataFrame(rows)
