"""Optuna inside Ray Tune: the sampler from the spec and a searcher that records every metric.

Ray's ``OptunaSearch`` tells Optuna only the objective values, and tells an errored trial
that had reported before as COMPLETE. Ours stores every reported metric as a user attribute
first (so constraints may name any metric and the study alone is a full record), and tells an
errored trial as FAIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

import search_spaces

from .spec import SearchSpec

RECORDED = ("accuracy", "val_loss", "latency_ms", "latency_p90_ms", "latency_spread", "macs",
            "params", "epoch")


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    constraints = _constraints_func(spec) if spec.constraints else None
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=s.seed,
                                             constraints_func=constraints)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, constraints_func=constraints)
    return optuna.samplers.RandomSampler(seed=s.seed)


def _constraints_func(spec: SearchSpec):
    def violations(trial: FrozenTrial) -> Sequence[float]:
        return [c.violation(float(trial.user_attrs.get(c.metric, float("inf"))))
                for c in spec.constraints]
    return violations


def define_by_run(spec: SearchSpec):
    """Optuna define-by-run function: draws a candidate; only ``trial.suggest_*`` calls."""
    space = search_spaces.get(spec.space.name)

    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        candidate = space.suggest(trial, spec.space.dims)
        return {"candidate": candidate.to_dict(), "trial": trial.number}
    return suggest


class StudySearcher(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result:
            for name in RECORDED:
                if result.get(name) is not None:
                    ot_trial.set_user_attr(name, result[name])
        if error and ot_trial is not None and trial_id not in self._completed_trials:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(spec: SearchSpec, storage_url: str) -> StudySearcher:
    return StudySearcher(space=define_by_run(spec), metric=spec.metric_names, mode=spec.modes,
                         sampler=make_sampler(spec), study_name=spec.name,
                         storage=optuna.storages.RDBStorage(storage_url))
