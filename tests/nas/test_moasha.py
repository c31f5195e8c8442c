"""MO-ASHA's rung decisions against hand-computed cases, its Ray scheduler, and rungs rebuilt
from the per-epoch results a study records (what a resumed search does)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from nas import spec as specs
from nas.moasha import Rungs, continues, fronts, minimised, rank_order, rung_levels
from nas.moasha_scheduler import MOASHAScheduler
from nas.searcher import PER_EPOCH, epoch_history, make_searcher

ACC_LAT = [("accuracy", "max"), ("latency_ms", "min")]
QUICK = Path(__file__).resolve().parents[2] / "configs" / "quick.yaml"


def vec(accuracy: float, latency: float) -> tuple[float, float]:
    return minimised({"accuracy": accuracy, "latency_ms": latency}, ACC_LAT)


def syne_tune_port(recorded: dict, values: tuple, reduction_factor: int) -> bool:
    """What Syne Tune's bracket does with its non-dominated sort: the sort gives the rows'
    indices in rank order, and the bracket reads that list as one score per row."""
    rows = [*recorded.values(), values]
    scores = rank_order(np.array(rows, dtype=float))  # indices in rank order, not scores
    ranks = np.searchsorted(sorted(scores), scores) / len(scores)
    return not ranks[-1] > 1 / reduction_factor


def test_rung_levels():
    assert rung_levels(1, 3, 9) == (1, 3, 9)
    assert rung_levels(1, 3, 10) == (1, 3, 9)
    assert rung_levels(2, 2, 8) == (2, 4, 8)
    assert rung_levels(1, 3, 2) == (1,)
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        rung_levels(1, 1, 3)


def test_minimised_negates_max_objectives_and_marks_unknown_values():
    objectives = [("accuracy", "max"), ("latency_ms", "min"), ("macs", "min")]
    assert minimised({"accuracy": 0.8, "latency_ms": 2.0, "macs": 7}, objectives) == (
        -0.8, 2.0, 7.0)
    assert math.isnan(minimised({"accuracy": 0.8, "macs": 7}, objectives)[1])


def test_fronts_peel_non_dominated_rows():
    points = np.array([vec(0.8, 5), vec(0.7, 6), vec(0.6, 7), vec(0.7, 2)])
    # 0 and 3 trade off; 3 dominates 1 (better on both); 1 dominates 2
    assert fronts(points) == [[0, 3], [1], [2]]


def test_a_newcomer_dominating_every_recorded_trial_continues():
    recorded = {1: vec(0.80, 5.0), 2: vec(0.70, 6.0), 3: vec(0.60, 7.0)}
    newcomer = vec(0.90, 4.0)  # better accuracy and latency than all three
    assert continues(recorded, 4, newcomer, reduction_factor=3)
    # the port stops it: ranks = indices [3, 0, 1, 2] read as scores -> its "rank" 2/4
    assert not syne_tune_port(recorded, newcomer, reduction_factor=3)


def test_mixed_directions_front_then_spread():
    # 1 and 3 trade off (front 0; 1 is more accurate), 3 dominates 2: order 1, 3, 2
    recorded = {1: vec(0.80, 5.0), 2: vec(0.70, 2.0)}
    newcomer = vec(0.75, 1.0)
    assert continues(recorded, 3, newcomer, reduction_factor=3)  # place 1: 1/3 <= 1/3
    assert not continues(recorded, 3, newcomer, reduction_factor=4)  # 1/3 > 1/4


def test_costs_known_before_training_count_at_the_rung():
    """The fastest candidate is the least accurate: on accuracy alone it is last (ASHA stops
    it); on both objectives it is the far end of the front and continues."""
    recorded = {1: vec(0.80, 5.0), 2: vec(0.78, 4.0), 3: vec(0.76, 3.0)}
    fast = vec(0.60, 0.5)
    # all four on front 0; scaled to the rung's ranges trial 1 is (0, 1), the newcomer (1, 0):
    # the farthest from trial 1, so at place 1 of four: 1/4 <= 1/3
    points = np.array([*recorded.values(), fast])
    assert fronts(points) == [[0, 1, 2, 3]]
    assert rank_order(points)[:2] == [0, 3]
    assert continues(recorded, 4, fast, reduction_factor=3)
    accuracy_only = {k: v[:1] for k, v in recorded.items()}
    assert not continues(accuracy_only, 4, fast[:1], reduction_factor=3)  # place 3: 3/4


def test_three_objectives():
    objectives = [("accuracy", "max"), ("latency_ms", "min"), ("macs", "min")]

    def v(accuracy, latency, macs):
        return minimised({"accuracy": accuracy, "latency_ms": latency, "macs": macs},
                         objectives)
    recorded = {1: v(0.8, 2.0, 100), 2: v(0.8, 2.0, 200), 3: v(0.7, 3.0, 300)}
    # 1 dominates 2 (fewer MACs, equal otherwise), 3 and the newcomer; the newcomer
    # dominates 3 and trades off with 2 (front 1, where 2 comes first: more accurate)
    assert not continues(recorded, 4, v(0.75, 2.5, 150), reduction_factor=3)  # place 2: 2/4
    assert continues(recorded, 4, v(0.75, 2.5, 150), reduction_factor=2)  # 2/4 <= 1/2
    assert continues(recorded, 4, v(0.75, 1.0, 150), reduction_factor=3)  # front 0 with 1


def test_ties_go_to_the_lower_trial_key_whatever_the_arrival_order():
    same = vec(0.80, 5.0)
    assert not continues({1: same}, 2, same, reduction_factor=3)  # place 1 of 2
    assert continues({1: same}, 0, same, reduction_factor=3)  # an earlier trial's result
    recorded = {5: vec(0.7, 1.0), 1: vec(0.8, 5.0), 3: vec(0.75, 3.0)}
    shuffled = dict(reversed(list(recorded.items())))
    for values in (vec(0.72, 2.0), vec(0.9, 9.0), vec(0.6, 0.5), vec(0.75, 3.0)):
        assert continues(recorded, 4, values, 3) == continues(shuffled, 4, values, 3)


def test_an_objective_some_row_does_not_know_is_left_out():
    recorded = {1: vec(0.80, 5.0), 2: vec(0.70, 1.0)}
    adaptive = minimised({"accuracy": 0.75}, ACC_LAT)  # latency known only after training
    # latency is left out of this decision; on accuracy alone: 1, newcomer, 2
    assert continues(recorded, 3, adaptive, reduction_factor=3)  # place 1 of 3
    assert not continues(recorded, 3, adaptive, reduction_factor=4)


def test_rungs_judge_each_trial_once_per_rung():
    rungs = Rungs(rung_levels(1, 3, 9), reduction_factor=3)  # epochs 1, 3, 9
    assert rungs.decide(0, 1, vec(0.5, 1.0))  # alone
    assert not rungs.decide(1, 1, vec(0.4, 2.0))  # dominated by trial 0: place 1 of 2
    assert rungs.decide(0, 3, vec(0.6, 1.0))
    assert rungs.decide(0, 4, vec(0.1, 9.0))  # no rung at epoch 4
    assert rungs.decide(0, 3, vec(0.0, 9.0))  # already judged at epoch 3: not again
    assert set(rungs.records[1]) == {0, 1} and rungs.records[3] == {0: vec(0.6, 1.0)}
    # a trial first seen past a rung (resumed from an older study) is judged there too:
    # first at epoch 1 (the most accurate), dominated by trial 0 at epoch 3
    assert not rungs.decide(2, 3, vec(0.55, 1.5))
    assert 2 in rungs.records[1] and 2 in rungs.records[3]


def _trial(number: int) -> SimpleNamespace:
    return SimpleNamespace(config={"trial": number})  # what the scheduler reads of Ray's


def _scheduler(**kwargs) -> MOASHAScheduler:
    return MOASHAScheduler(ACC_LAT, grace_period=1, reduction_factor=3, max_t=3, **kwargs)


# (trial, epoch, accuracy, latency) as they arrive; rungs at epochs 1 and 3; a trial at
# place p of n continues iff p / n <= 1/3
RESULTS = [
    (0, 1, 0.50, 2.0),  # alone at the rung
    (1, 1, 0.40, 3.0),  # dominated by 0: place 1 of 2
    (2, 1, 0.45, 1.0),  # front 0 with 0, after it (less accurate): place 1 of 3
    (0, 2, 0.60, 2.0),  # no rung at epoch 2
    (3, 1, 0.30, 4.0),  # dominated by all: place 3 of 4
    (0, 3, 0.70, 2.0),  # alone at the rung of epoch 3
    (4, 1, 0.70, 0.50),  # dominates every recorded trial
    (5, 1, 0.35, 0.20),  # the fastest: front 0 with 4, place 1 of 6
    (6, 1, 0.42, 1.50),  # third front (4, 5 | 0, 2 | 6): place 4 of 7
]
DECISIONS = ["CONTINUE", "STOP", "CONTINUE", "CONTINUE", "STOP", "CONTINUE", "CONTINUE",
             "CONTINUE", "STOP"]


def _feed(scheduler: MOASHAScheduler, results) -> list[str]:
    return [scheduler.on_trial_result(None, _trial(n), {"epoch": e, "accuracy": a,
                                                        "latency_ms": lat})
            for n, e, a, lat in results]


def test_scheduler_stops_trials_by_rung_rank():
    scheduler = _scheduler()
    assert _feed(scheduler, RESULTS) == DECISIONS
    assert scheduler.stopped == 3 and scheduler.rungs.levels == (1, 3)
    assert "3 stopped" in scheduler.debug_string()


def test_results_without_a_trained_epoch_are_not_ranked():
    scheduler = _scheduler()
    infeasible = {"epoch": 0, "accuracy": 0.0, "latency_ms": 9.0, "infeasible": "x"}
    failed = {"epoch": 1, "accuracy": float("nan"), "latency_ms": float("nan"),
              "failed": "NonFiniteLoss"}
    for number, result in ((0, infeasible), (1, failed), (2, {"epoch": 1})):
        assert scheduler.on_trial_result(None, _trial(number), result) == "CONTINUE"
    assert scheduler.rungs.records[1] == {}


def test_rungs_rebuilt_from_history_decide_as_the_live_ones():
    live = _scheduler()
    _feed(live, RESULTS[:5])
    history = [(n, e, {"accuracy": a, "latency_ms": lat}) for n, e, a, lat in RESULTS[:5]]
    rebuilt = _scheduler(history=history)
    assert rebuilt.rungs.records == live.rungs.records
    assert _feed(rebuilt, RESULTS[5:]) == DECISIONS[5:]
    fresh = _scheduler()  # what a resume without them would decide
    assert _feed(fresh, [(7, 1, 0.2, 9.0)]) == ["CONTINUE"]
    assert _feed(rebuilt, [(7, 1, 0.2, 9.0)]) == ["STOP"]


def test_the_study_records_per_epoch_values_that_rebuild_the_rungs(tmp_path):
    spec = specs.load(QUICK, ["scheduler=moasha", "name=rungs", f"results_dir={tmp_path}"])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher = make_searcher(spec, url)
    for n in range(5):
        searcher.suggest(f"t{n}")
    live = _scheduler()
    for n, epoch, accuracy, latency in RESULTS[:5]:  # as the driver sees them
        result = {"epoch": epoch, "accuracy": accuracy, "latency_ms": latency, "macs": 5,
                  "trial": n}
        if live.on_trial_result(None, _trial(n), result) == "STOP":
            result["done"] = True  # what Ray marks before the driver's callbacks run
        searcher.record_epoch(f"t{n}", result)
    searcher.record_epoch("t4", {"epoch": 0, "infeasible": "latency_ms <= 1",
                                 "accuracy": 0.0, "latency_ms": 9.0})
    study = optuna.load_study(study_name="rungs", storage=url)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert trials[0].user_attrs[PER_EPOCH] == [
        {"epoch": 1, "accuracy": 0.5, "latency_ms": 2.0, "macs": 5.0},
        {"epoch": 2, "accuracy": 0.6, "latency_ms": 2.0, "macs": 5.0}]
    assert trials[1].user_attrs[PER_EPOCH] == [
        {"epoch": 1, "accuracy": 0.4, "latency_ms": 3.0, "macs": 5.0, "stopped": True}]
    assert PER_EPOCH not in trials[4].user_attrs  # infeasible: no trained epoch
    rebuilt = _scheduler(history=epoch_history(trials))
    assert rebuilt.rungs.records == live.rungs.records
    assert _feed(rebuilt, RESULTS[5:]) == DECISIONS[5:]


def test_a_resume_tells_a_stop_its_dead_driver_decided_but_never_told(tmp_path):
    from nas.durable import reconcile
    from nas.results import load_results

    spec = specs.load(QUICK, ["scheduler=moasha", "name=dead", f"results_dir={tmp_path}"])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher = make_searcher(spec, url)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.record_epoch("a", {"epoch": 1, "accuracy": 0.5, "latency_ms": 2.0})
    searcher.record_epoch("b", {"epoch": 1, "accuracy": 0.4, "latency_ms": 3.0, "done": True})
    # the driver dies here: both trials are RUNNING in the study
    state = reconcile(spec, tmp_path, url)
    assert [t.number for t in state.orphans] == [0]  # trial 0 runs again; 1 was stopped
    study = optuna.load_study(study_name="dead", storage=url)
    stopped = study.trials[1]
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.user_attrs["accuracy"] == 0.4 and stopped.user_attrs["epoch"] == 1
    row = load_results(tmp_path).set_index("trial").loc[1]
    assert row["status"] == "stopped" and row["epochs"] == 1 and row["latency_ms"] == 3.0
