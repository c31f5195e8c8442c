"""Pareto fronts, constraints, hypervolume and the knee of a study's results table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import load_results, study_constraints, study_objectives, study_spec
from .spec import Objective, SpecError, parse_objectives


def _as_minimised(frame: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    cols = [frame[o.metric].to_numpy(dtype=float) * (-1.0 if o.direction == "max" else 1.0)
            for o in objectives]
    return np.stack(cols, axis=1) if cols else np.zeros((len(frame), 0))


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Mask of rows no other row dominates (all <=, one <), minimisation. Ties both stay."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(points <= points[i], axis=1)
        better = np.any(points < points[i], axis=1)
        keep[i] = not np.any(no_worse & better)
    return keep


def filter_rows(frame: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows of ``frame`` matching a pandas query such as ``"latency_ms <= 5 and params < 1e6"``."""
    if not where:
        return frame
    try:
        return frame.query(where)
    except Exception as err:  # pandas raises many kinds for a bad expression
        raise SpecError(f"--where = {where!r}: not a valid condition over the columns "
                        f"{list(frame.columns)} ({type(err).__name__}: {err})") from None


def pareto_front(frame: pd.DataFrame, objectives: Sequence[str | Objective],
                 where: str | None = None) -> pd.DataFrame:
    """The non-dominated completed rows of ``frame`` for ``objectives``, best first.

    Every budget point is a candidate (a trial that reused an earlier trial's result,
    ``duplicate_of``, is that trial's point, not another); among a trial's points with
    equal objective values only the first (lowest point) is kept.
    """
    objs = parse_objectives(objectives)
    missing = [o.metric for o in objs if o.metric not in frame.columns]
    if missing:
        raise SpecError(f"objectives = {missing}: not columns of the results "
                        f"{list(frame.columns)}")
    rows = frame
    if "status" in rows.columns:
        rows = rows[rows["status"] == "complete"]
    if "duplicate_of" in rows.columns:  # a reused result is its first trial's point
        rows = rows[rows["duplicate_of"].isna()]
    rows = filter_rows(rows, where).dropna(subset=[o.metric for o in objs])
    if "point" in rows.columns:  # budget points of one trial that change nothing: the first
        rows = rows.drop_duplicates(subset=["trial", *[o.metric for o in objs]])
    front = rows[non_dominated(_as_minimised(rows, objs))]
    first = objs[0]
    return front.sort_values(first.metric, ascending=first.direction == "min", kind="stable")


def study_front(study_dir: Path) -> pd.DataFrame:
    """The front ``nas pareto`` shows by default: the study's objectives and constraints."""
    spec = study_spec(study_dir)
    return pareto_front(load_results(study_dir), study_objectives(spec),
                        study_constraints(spec))


def hypervolume(frame: pd.DataFrame, objectives: Sequence[str | Objective],
                reference: Sequence[float]) -> float:
    """Volume dominated by the rows and bounded by ``reference`` (in the objectives' units)."""
    objs = parse_objectives(objectives)
    if len(reference) != len(objs):
        raise SpecError(f"reference = {list(reference)}: needs one value per objective "
                        f"({len(objs)})")
    sign = np.array([-1.0 if o.direction == "max" else 1.0 for o in objs])
    points = _as_minimised(frame, objs)
    ref = np.asarray(reference, dtype=float) * sign
    points = points[np.all(points < ref, axis=1)]
    if len(points) == 0:
        return 0.0
    return float(_hv(points[non_dominated(points)], ref))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by slicing along the last objective (fine for small fronts)."""
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    total = 0.0
    for i in range(len(points)):
        upper = points[i + 1, -1] if i + 1 < len(points) else ref[-1]
        depth = upper - points[i, -1]
        if depth > 0:
            head = points[: i + 1, :-1]
            total += depth * _hv(head[non_dominated(head)], ref[:-1])
    return total


def default_reference(frame: pd.DataFrame, objectives: Sequence[str | Objective]) -> list[float]:
    """A reference every completed row beats: 0 for accuracy, 1.1 x the worst for the rest."""
    ref = []
    for o in parse_objectives(objectives):
        values = frame[o.metric].dropna().to_numpy(dtype=float)
        if o.direction == "max":
            ref.append(0.0 if o.metric == "accuracy" else float(values.min()) - 1.0)
        else:
            ref.append(float(values.max()) * 1.1 if len(values) else 1.0)
    return ref


def knee(front: pd.DataFrame, objectives: Sequence[str | Objective]) -> Any:
    """Index of the front row farthest from the line joining its two extremes (2 objectives)."""
    objs = parse_objectives(objectives)[:2]
    if len(front) < 3 or len(objs) < 2:
        return None
    pts = _as_minimised(front, objs)
    span = np.ptp(pts, axis=0)
    pts = (pts - pts.min(axis=0)) / np.where(span > 0, span, 1.0)
    a, b = pts[np.argmin(pts[:, 0])], pts[np.argmin(pts[:, 1])]
    line = b - a
    norm = np.linalg.norm(line) or 1.0
    dist = np.abs(line[0] * (pts[:, 1] - a[1]) - line[1] * (pts[:, 0] - a[0])) / norm
    return front.index[int(np.argmax(dist))]
