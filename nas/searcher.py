"""Optuna inside Ray Tune: the sampler from the spec and a searcher that records every metric.

Ray's ``OptunaSearch`` tells Optuna only the objective values, and tells an errored trial
that had reported before (or one a scheduler stopped early) as COMPLETE. Ours stores every
reported metric as a user attribute first (so constraints may name any metric and the study
alone is a full record), tells an errored trial as FAIL and a stopped one as PRUNED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

import search_spaces
from search_spaces.dims import Dim

from .spec import METRICS, Constraint, SearchSpec

RECORDED = (*METRICS, "epoch", "infeasible", "halt_eps")


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    constraints = Violations(spec.constraints) if spec.constraints else None
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=s.seed,
                                             constraints_func=constraints)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, constraints_func=constraints)
    return optuna.samplers.RandomSampler(seed=s.seed)


class Violations:
    """Optuna constraints function: one value per constraint, <= 0 where it holds.

    A class, not a closure: Ray saves the searcher (and its sampler) with pickle.
    """

    def __init__(self, constraints: Sequence[Constraint]) -> None:
        self.constraints = tuple(constraints)

    def __call__(self, trial: FrozenTrial) -> Sequence[float]:
        return [c.violation(float(trial.user_attrs.get(c.metric, float("inf"))))
                for c in self.constraints]


class DrawCandidate:
    """Optuna define-by-run function: draws a candidate; only ``trial.suggest_*`` calls."""

    def __init__(self, space: str, dims: Mapping[str, Dim]) -> None:
        self.space, self.dims = space, dict(dims)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        candidate = search_spaces.get(self.space).suggest(trial, self.dims)
        return {"candidate": candidate.to_dict(), "trial": trial.number}


def trial_status(result: dict[str, Any] | None, error: bool, epochs: int) -> str:
    """complete | infeasible (costs broke a constraint, not trained) | stopped (early, by the
    scheduler or a cancelled run) | error."""
    if error:
        return "error"
    if result and result.get("infeasible"):
        return "infeasible"
    if not result or result.get("epoch", 0) < epochs:
        return "stopped"
    return "complete"


class StudySearcher(OptunaSearch):
    """Tells Optuna: complete and infeasible trials with their values (the constraints say
    which are infeasible), trials stopped early as PRUNED, errored ones as FAIL."""

    def __init__(self, *args: Any, epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs = epochs

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        for name in RECORDED:
            if result and result.get(name) is not None:
                ot_trial.set_user_attr(name, result[name])
        status = trial_status(result, error, self._epochs)
        if status in ("error", "stopped"):
            state = TrialState.FAIL if status == "error" else TrialState.PRUNED
            self._ot_study.tell(ot_trial, state=state)
            self._completed_trials.add(trial_id)
            return None
        return super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(spec: SearchSpec, storage_url: str) -> StudySearcher:
    return StudySearcher(space=DrawCandidate(spec.space.name, spec.space.dims),
                         metric=spec.metric_names, mode=spec.modes,
                         sampler=make_sampler(spec), study_name=spec.name,
                         epochs=spec.train.epochs,
                         storage=optuna.storages.RDBStorage(storage_url))
