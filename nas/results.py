"""The results of a study: its folder layout, the driver-side writer and ``load_results``.

results/<study>/
  spec.yaml        the resolved spec that ran
  study.db         the Optuna study (SQLite; the record of truth for completed trials)
  trials.parquet   one row per (trial, budget point): config (JSON), objectives, status,
                   timings, provenance. A static trial has one row (point 0); an adaptive
                   one a row per operating point (``point``; its knob values in ``knobs``,
                   JSON, and in a column per knob), point 0 the trained one.
                   ``origin`` says where a row's config came from ("sampler", what a trial
                   config's "origin" says, or "pruned": a variant added by nas/prune.py, with
                   ``parent`` and ``keep``); ``duplicate_of``: the earlier trial of the
                   same config whose result a trial reused untrained (nas/searcher.py;
                   its weights are that trial's); ``imp_*`` columns are the Taylor importance
                   summary of the trained trial (NaN where a family has no such component)
  trials/<n>/      the trial's final weights (model.safetensors), candidate.json, history.json,
                   importance.safetensors (Taylor scores; trained trials when enabled)
  ray/             Ray Tune's own experiment folder
  latency_cache.jsonl  the latency target's measurements (``latency.node_resource``; one
                   JSON entry a line: key, latency, host, node, when; nas/latency_target.py)
  pareto.png       the front, drawn after the search
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .spec import DEFAULT_OBJECTIVES, METRICS

SPEC = "spec.yaml"
STUDY_DB = "study.db"
TABLE = "trials.parquet"
TRIALS = "trials"
RAY = "ray"
PLOT = "pareto.png"
IMPORTANCE = "importance.safetensors"  # in trials/<n>/: the trained trial's Taylor scores
# checkpoint files that only resuming needs (trials/<n>/ does not keep them)
RESUME_ONLY = ("optimizer.safetensors", "optimizer.json", "progress.json")

_EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "accuracy", "lr", "epoch_time_s")


class ResultsError(ValueError):
    """A results folder is missing or is not a study folder."""


def study_paths(study_dir: Path | str) -> Path:
    """Check that ``study_dir`` holds a study and return it as a Path."""
    path = Path(study_dir)
    if not (path / TABLE).is_file():
        raise ResultsError(f"RESULTS = {str(path)!r}: not a study folder (no {TABLE} in it)")
    return path


def load_results(study_dir: Path | str) -> pd.DataFrame:
    """The study's ``trials.parquet`` as a DataFrame, one row per (trial, budget point),
    sorted by trial and point."""
    frame = pd.read_parquet(study_paths(study_dir) / TABLE)
    if "point" not in frame.columns:  # a study written before budget points existed
        frame["point"] = 0
    frame["origin"] = frame["origin"].fillna("sampler") if "origin" in frame else "sampler"
    return frame.sort_values(["trial", "point"], kind="stable").reset_index(drop=True)


def knob_columns(frame: pd.DataFrame) -> list[str]:
    """The budget knobs that the rows' ``knobs`` JSON names (first seen first)."""
    names: dict[str, None] = {}
    for text in frame.get("knobs", pd.Series(dtype=object)).dropna():
        names.update(dict.fromkeys(json.loads(text)))
    return list(names)


def _point_row(row: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A trial's row at one budget point: the point's metrics, usage figures and knobs (the
    latency provenance stays the trial's)."""
    knobs = point.get("knobs", {})
    values = {k: v for k, v in point.items() if k != "knobs" and not k.startswith("prov_")}
    return {**row, **values, "knobs": json.dumps(knobs, sort_keys=True), **knobs}


def trial_rows(trial_number: int, status: str, space: str, candidate: dict[str, Any],
               key: str, last: dict[str, Any], history: list[dict[str, Any]],
               error: str = "", origin: str = "sampler") -> list[dict[str, Any]]:
    """The rows of ``trials.parquet`` for a trial's final report: one per budget point it
    reported (``points``, JSON), or one (point 0)."""
    row = trial_row(trial_number, status, space, candidate, key, last, history, error, origin)
    points = json.loads(last["points"]) if last.get("points") else []
    return [_point_row(row, p) for p in points] or [row]


def trial_row(trial_number: int, status: str, space: str, candidate: dict[str, Any],
              key: str, last: dict[str, Any], history: list[dict[str, Any]],
              error: str = "", origin: str = "sampler") -> dict[str, Any]:
    """One row of ``trials.parquet`` from a trial's final report (its point 0)."""
    knobs = json.loads(last.get("knobs") or "{}")
    row: dict[str, Any] = {"trial": trial_number, "point": 0, "status": status,
                           "space": space, "key": key, "origin": origin,
                           "config": json.dumps(candidate, sort_keys=True),
                           "knobs": json.dumps(knobs, sort_keys=True), **knobs}
    for name in METRICS:
        row[name] = last.get(name)
    if status == "infeasible":
        row["accuracy"] = None  # never trained: the 0.0 it told Optuna is no accuracy
    row["epochs"] = len(history)
    row["train_time_s"] = sum(h.get("epoch_time_s", 0.0) for h in history)
    row.update({k: v for k, v in last.items() if k.startswith(("prov_", "imp_", "init_"))})
    if last.get("duplicate_of") is not None:  # the same config as an earlier trial's
        row["duplicate_of"] = int(last["duplicate_of"])
    row["error"] = error
    return row


class TableWriter:
    """Appends rows to ``trials.parquet`` (one writer: the driver), atomically each time."""

    def __init__(self, study_dir: Path, *, resume: bool = False) -> None:
        """``resume``: start from the rows the table holds (to add rows after a search)."""
        self.path = study_dir / TABLE
        self.rows: list[dict[str, Any]] = (
            pd.read_parquet(self.path).to_dict("records")
            if resume and self.path.is_file() else [])

    @property
    def trials(self) -> int:
        return len({r["trial"] for r in self.rows})

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Write a trial's rows (replacing any it had)."""
        trials = {r["trial"] for r in rows}
        self.rows = [r for r in self.rows if r["trial"] not in trials] + list(rows)
        tmp = self.path.with_suffix(".tmp")
        pd.DataFrame(self.rows).to_parquet(tmp, index=False)
        os.replace(tmp, self.path)


def store_trial_files(study_dir: Path, trial_number: int, checkpoint: Any,
                      history: list[dict[str, Any]]) -> Path:
    """Copy a trial's final checkpoint (a Ray ``Checkpoint``, local or remote storage) into
    trials/<n>/ and write its epoch history."""
    folder = study_dir / TRIALS / str(trial_number)
    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        checkpoint.to_directory(str(folder))
        for name in RESUME_ONLY:  # what resuming needed; the trial is over
            (folder / name).unlink(missing_ok=True)
    epochs = [{k: h.get(k) for k in _EPOCH_KEYS} for h in history]
    (folder / "history.json").write_text(json.dumps(epochs, indent=1))
    return folder


def study_spec(study_dir: Path) -> dict[str, Any]:
    """The study's spec.yaml as a plain mapping ({} if it has none)."""
    import yaml
    path = study_dir / SPEC
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def study_objectives(spec: dict[str, Any]) -> list[str]:
    return list(spec.get("objectives") or DEFAULT_OBJECTIVES)


def study_constraints(spec: dict[str, Any]) -> str | None:
    """The study's own constraints as a --where condition (None if it has none)."""
    items = spec.get("constraints") or []
    return " and ".join(f"({c})" for c in items) or None


def progress_line(done: int, total: int, row: dict[str, Any], objectives: list[str],
                  started: float) -> str:
    values = "  ".join(f"{m}={fmt(row.get(m))}" for m in objectives)
    tail = f"  error: {row['error']}" if row["status"] == "error" else ""
    return (f"[{done}/{total}] trial {row['trial']} {row['status']}  {values}  "
            f"({time.monotonic() - started:.0f}s elapsed){tail}")


def fmt(value: Any) -> str:
    """A number as people read it in a table: 4 significant digits, thousands separated."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


Printer = Callable[[str], None]
