"""MO-ASHA's rungs: asynchronous successive halving that ranks by non-dominated sorting.

Salinas, Perrone, Cruchant, Archambeau, "A multi-objective perspective on jointly tuning
hardware and hyperparameters" (NAS workshop at ICLR 2021); Schmucker et al.,
"Multi-objective multi-fidelity hyperparameter optimization with application to fairness"
(2020). Syne Tune's ``MOASHA`` is the reference implementation.

A trial that reaches a rung (an epoch of :func:`rung_levels`) is compared with every trial
recorded at that rung before it, on all of the study's objectives at once: accuracy is the
value the trial reached at that epoch, costs known before training (latency, MACs, params)
are the same at every rung. The rows are sorted into non-dominated fronts; inside a front
an epsilon-net order (Syne Tune's) spreads the picks along the front: the row best on the
first objective first, then always the row farthest from those already picked, in the
rung's objective ranges. The newcomer continues iff its place ``p`` in that order (0:
first) among the ``n`` rows, itself included, has ``p / n <= 1 / reduction_factor`` (Syne
Tune's rule): alone at a rung it continues, and so does a newcomer that dominates every
recorded row (alone in the first front). A port of Syne Tune's code stops that one: its
sort returns the rows' indices in rank order, which its bracket then reads as per-row
scores.

Decisions depend on the rows' values and trial keys only, never on the order in which the
recorded rows arrived (ties go to the lower key), so rungs rebuilt after a resume decide as
the live ones did. An objective that some row of a decision does not know (NaN: an adaptive
candidate's latency before its budget points are measured) is left out of that decision.
Ray-free: nas/moasha_scheduler.py puts it behind Ray Tune's scheduler interface.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .pareto import non_dominated

Vector = tuple[float, ...]  # objective values, every one to be minimised (max ones negated)


def rung_levels(grace_period: int, reduction_factor: int, max_t: int) -> tuple[int, ...]:
    """The epochs at which trials are compared: ``grace_period * reduction_factor**k`` up
    to ``max_t``."""
    if grace_period < 1 or reduction_factor < 2 or max_t < grace_period:
        raise ValueError(f"need grace_period >= 1, reduction_factor >= 2, max_t >= "
                         f"grace_period; got {grace_period}, {reduction_factor}, {max_t}")
    levels, level = [], grace_period
    while level <= max_t:
        levels.append(level)
        level *= reduction_factor
    return tuple(levels)


def minimised(values: Mapping[str, float | None],
              objectives: Sequence[tuple[str, str]]) -> Vector:
    """``values`` as a vector to minimise over ``objectives`` ((metric, "max"|"min")
    pairs): max objectives negated, a missing or non-numeric value NaN."""
    out = []
    for metric, direction in objectives:
        value = values.get(metric)
        number = float(value) if isinstance(value, (int, float)) else math.nan
        out.append(-number if direction == "max" else number)
    return tuple(out)


def fronts(points: np.ndarray) -> list[list[int]]:
    """Row indices of ``points`` (minimisation) by non-dominated front, best front first,
    each front in row order."""
    remaining = list(range(len(points)))
    out = []
    while remaining:
        mask = non_dominated(points[remaining])
        out.append([i for i, keep in zip(remaining, mask, strict=True) if keep])
        remaining = [i for i, keep in zip(remaining, mask, strict=True) if not keep]
    return out


def spread_order(points: np.ndarray, front: list[int]) -> list[int]:
    """``front`` in epsilon-net order: the lexicographically best row on the objectives in
    their order first, then always the row with the largest distance to its nearest row
    picked so far (ties: the lower index). ``points`` are already scaled to comparable
    ranges."""
    first = min(front, key=lambda i: (tuple(points[i]), i))
    order, left = [first], [i for i in front if i != first]
    nearest = {i: float(np.linalg.norm(points[i] - points[first])) for i in left}
    while left:
        pick = max(left, key=lambda i: (nearest[i], -i))
        order.append(pick)
        left.remove(pick)
        for i in left:
            nearest[i] = min(nearest[i], float(np.linalg.norm(points[i] - points[pick])))
    return order


def rank_order(points: np.ndarray) -> list[int]:
    """Every row of ``points`` (minimisation) in MO-ASHA's order: front by front, each in
    epsilon-net order over the objectives scaled by their range among the rows."""
    low, span = points.min(axis=0), np.ptp(points, axis=0)
    scaled = (points - low) / np.where(span > 0, span, 1.0)
    return [i for front in fronts(points) for i in spread_order(scaled, front)]


def continues(recorded: Mapping[int, Vector], key: int, values: Vector,
              reduction_factor: int) -> bool:
    """Whether the trial ``key`` with ``values`` continues at a rung that holds
    ``recorded`` (trial key -> values): its place ``p`` in :func:`rank_order` among the
    ``n`` rows (itself included) must have ``p / n <= 1 / reduction_factor``."""
    rows = {**recorded, key: tuple(values)}
    keys = sorted(rows)
    points = np.array([rows[k] for k in keys], dtype=float).reshape(len(keys), -1)
    points = points[:, ~np.isnan(points).any(axis=0)]  # objectives every row knows
    place = rank_order(points).index(keys.index(key))
    return place * reduction_factor <= len(keys)


@dataclasses.dataclass
class Rungs:
    """The rungs of one bracket: at each level, the values of every trial that reached it."""

    levels: tuple[int, ...]
    reduction_factor: int
    records: dict[int, dict[int, Vector]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for level in self.levels:
            self.records.setdefault(level, {})

    def decide(self, key: int, epoch: int, values: Vector) -> bool:
        """A trial's result at ``epoch``: judged (and then recorded) at every rung up to
        ``epoch`` that has no record of it (normally the one at ``epoch``). False: stop."""
        go = True
        for level in self.levels:
            recorded = self.records[level]
            if level > epoch or key in recorded:
                continue
            go = continues(recorded, key, values, self.reduction_factor) and go
            recorded[key] = tuple(values)
        return go

    def record(self, key: int, epoch: int, values: Vector) -> None:
        """A result seen before (a resumed study's): recorded at its rung, not judged."""
        if epoch in self.records:
            self.records[epoch].setdefault(key, tuple(values))

    def rebuild(self, history: Iterable[tuple[int, int, Vector]]) -> None:
        """Record every (trial key, epoch, values) of ``history``."""
        for key, epoch, values in history:
            self.record(key, epoch, values)
