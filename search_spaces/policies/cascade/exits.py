"""Fitting a cascade's exit thresholds on held-out outputs (DVT's rule).

Exit thresholds (DVT's rule, as its code fits them): for a schedule value q the exit
proportions are ``q^k`` for k = 1..S, normalised; stage by stage, ``floor(N p_k)`` of the N
calibration images exit at stage k, the most confident of those still running, and T_k is the
confidence of the last of them (images tied with it exit too). A proportion that rounds to no
image turns the exit off (threshold 1: the value a cascade is trained with, where every image
runs every stage; so the trained point 0 is the full cascade). The calibration images are a
split of their own (trainers/dataset.py), neither trained on nor used for search decisions;
the official code fits on training images. The operating points after point 0 use q spread
evenly in log q over the range of the paper's schedule (1..59)/20, from 2.95 (most images
reach the last stage) down to 0.05 (most leave at the first): :func:`schedule`;
a fitted threshold takes no ``budget.limits`` entry (the spec refuses one, naming it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...adaptive import ladder
from .fields import OFF

BELOW_ONE = float(torch.tensor(1.0).nextafter(torch.tensor(0.0)))  # float32 just below 1
Q_RANGE = (59 / 20, 1 / 20)  # the paper's schedule (1..59)/20, from most to least compute


def exit_proportions(q: float, stages: int) -> tuple[float, ...]:
    """DVT's share of images leaving at each stage: ``q^k`` (k = 1..stages), normalised."""
    weights = [q ** k for k in range(1, stages + 1)]
    return tuple(w / sum(weights) for w in weights)


def fit_thresholds(confidence: torch.Tensor,
                   proportions: Sequence[float]) -> tuple[float, ...]:
    """The exit thresholds (stages but the last) that make ``floor(N p_k)`` of the N images
    of ``confidence`` (N, S) (each stage's max probability) exit at stage k, greedily."""
    n, stages = confidence.shape
    running = torch.ones(n, dtype=torch.bool)
    thresholds = []
    for k in range(stages - 1):
        count = math.floor(n * proportions[k] + 1e-9)
        conf = confidence[running, k]
        if count == 0 or conf.numel() == 0:
            thresholds.append(OFF)
            continue
        ranked = conf.sort(descending=True).values
        threshold = min(float(ranked[min(count, ranked.numel()) - 1]), BELOW_ONE)
        thresholds.append(threshold)
        running &= ~(confidence[:, k] >= threshold)
    return tuple(thresholds)


def schedule(points: int) -> tuple[float, ...]:
    """``points`` values of q over the range of the paper's (1..59)/20, most compute first,
    evenly spaced in log q (one point: q = 1, equal proportions).

    Log spacing because q and 1/q give the same exit shares in reverse order: the shares
    move evenly with log q, while the paper's linear grid puts most of its values above 1
    (most images reach the last stage; measured: 4 of 7 linear points cost more than a
    static parent) and few where a cascade saves compute."""
    if points == 1:
        return (1.0,)
    return tuple(round(math.exp(v), 4) for v in ladder(*(math.log(q) for q in Q_RANGE), points))
