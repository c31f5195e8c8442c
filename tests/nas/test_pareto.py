"""Pareto fronts against Optuna's own best_trials; hypervolume against hand-computed values."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from nas.pareto import default_reference, hypervolume, knee, pareto_front
from nas.spec import SpecError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def random_frame(seed: int, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.5, 0.95, n).round(2)  # rounding makes ties and duplicates
    lat = rng.uniform(1.0, 9.0, n).round(1)
    params = rng.integers(10_000, 90_000, n)
    return pd.DataFrame({"trial": np.arange(n), "status": "complete", "accuracy": acc,
                         "latency_ms": lat, "params": params})


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("objectives", [["accuracy:max", "latency_ms:min"],
                                        ["accuracy:max", "latency_ms:min", "params:min"]])
def test_front_equals_optuna_best_trials(seed, objectives):
    frame = random_frame(seed)
    directions = ["maximize" if o.endswith("max") else "minimize" for o in objectives]
    study = optuna.create_study(directions=directions)
    metrics = [o.split(":")[0] for o in objectives]
    for _, row in frame.iterrows():
        study.add_trial(optuna.trial.create_trial(values=[float(row[m]) for m in metrics]))
    expected = sorted(t.number for t in study.best_trials)
    assert sorted(pareto_front(frame, objectives)["trial"]) == expected


def test_front_ignores_failed_rows_and_applies_where():
    frame = pd.DataFrame({"trial": [0, 1, 2, 3], "status": ["complete", "error", "complete",
                                                              "complete"],
                          "accuracy": [0.9, 0.99, 0.8, 0.7], "latency_ms": [5.0, 0.1, 2.0, 1.0]})
    assert list(pareto_front(frame, ["accuracy", "latency_ms"])["trial"]) == [0, 2, 3]
    limited = pareto_front(frame, ["accuracy:max", "latency_ms:min"], where="latency_ms <= 2")
    assert list(limited["trial"]) == [2, 3]
    with pytest.raises(SpecError, match="^--where"):
        pareto_front(frame, ["accuracy"], where="latency_ms <=")
    with pytest.raises(SpecError, match="^objectives"):
        pareto_front(frame, ["speed:max"])


def test_hypervolume_two_objectives_by_hand():
    # accuracy max, latency min, reference (0, 10): rectangles 0.9*(10-5) + 0.8*(5-2) ...
    frame = pd.DataFrame({"accuracy": [0.9, 0.8, 0.5], "latency_ms": [5.0, 2.0, 3.0]})
    # union: [2,5) x 0.8 + [5,10) x 0.9 (point 3 is dominated)
    expected = 0.8 * 3 + 0.9 * 5
    assert hypervolume(frame, ["accuracy:max", "latency_ms:min"], [0.0, 10.0]) == \
        pytest.approx(expected)


def test_hypervolume_three_objectives_by_hand():
    # two boxes in minimisation space with ref (4,4,4): a=(1,2,3) b=(2,1,3)
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 1.0], "c": [3.0, 3.0]})
    frame = frame.rename(columns={"a": "latency_ms", "b": "macs", "c": "params"})
    # union of [1,4]x[2,4]x[3,4] (6) and [2,4]x[1,4]x[3,4] (6), overlap [2,4]x[2,4]x[3,4] (4)
    assert hypervolume(frame, ["latency_ms", "macs", "params"], [4, 4, 4]) == pytest.approx(8.0)


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_monte_carlo(seed):
    frame = random_frame(seed, 25)
    objs = ["accuracy:max", "latency_ms:min", "params:min"]
    ref = [0.4, 10.0, 100_000]
    exact = hypervolume(frame, objs, ref)
    rng = np.random.default_rng(seed)
    samples = np.column_stack([rng.uniform(0.4, 1.0, 200_000), rng.uniform(0, 10, 200_000),
                               rng.uniform(0, 100_000, 200_000)])
    pts = frame[["accuracy", "latency_ms", "params"]].to_numpy(float)
    dominated = np.zeros(len(samples), dtype=bool)
    for p in pts:
        dominated |= (samples[:, 0] <= p[0]) & (samples[:, 1] >= p[1]) & (samples[:, 2] >= p[2])
    box = 0.6 * 10 * 100_000
    assert exact == pytest.approx(dominated.mean() * box, rel=0.02)


def test_default_reference_and_knee():
    frame = pd.DataFrame({"trial": range(4), "accuracy": [0.6, 0.85, 0.88, 0.9],
                          "latency_ms": [1.0, 2.0, 6.0, 10.0]})
    assert default_reference(frame, ["accuracy", "latency_ms"]) == [0.0, pytest.approx(11.0)]
    front = pareto_front(frame, ["accuracy", "latency_ms"])
    assert frame.loc[knee(front, ["accuracy", "latency_ms"]), "trial"] == 1
