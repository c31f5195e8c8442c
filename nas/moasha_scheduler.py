"""``scheduler: moasha``: MO-ASHA's rungs (nas/moasha.py) as a Ray Tune ``TrialScheduler``.

Ray's schedulers rank trials by one metric; this one ranks each result at a rung on all of
the study's objectives. A trial is known by its Optuna trial number (``config["trial"]``,
kept by a trial handed out again after a resume) and its rungs are counted in epochs (the
``epoch`` a trial reports, not Ray's iterations, which restart with a resumed trial).
Results that carry no trained epoch (an infeasible candidate's, a deterministic failure's)
are not ranked. Ray never saves a scheduler's state: a resumed search rebuilds the rungs
from the per-epoch results the study recorded (``history``, nas/searcher.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .moasha import Rungs, minimised, rung_levels


class MOASHAScheduler(FIFOScheduler):
    """Stops a trial whose result at a rung is not among the first ``1/reduction_factor``
    of that rung in non-dominated order over ``objectives`` ((metric, "max"|"min") pairs).
    A result without a number for ``trained`` (the objective that training changes) is not
    ranked."""

    def __init__(self, objectives: Sequence[tuple[str, str]], *, grace_period: int,
                 reduction_factor: int, max_t: int, trained: str = "accuracy",
                 history: Iterable[tuple[int, int, Mapping[str, Any]]] = ()) -> None:
        super().__init__()
        self._objectives = tuple(objectives)
        self._trained = [m for m, _ in self._objectives].index(trained)
        self.rungs = Rungs(rung_levels(grace_period, reduction_factor, max_t),
                           reduction_factor)
        self.rungs.rebuild((key, epoch, minimised(values, self._objectives))
                           for key, epoch, values in history)
        self.stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # it ranks on the study's objectives, given at construction

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        epoch = result.get("epoch")
        if not epoch or result.get("failed") or result.get("infeasible"):
            return TrialScheduler.CONTINUE
        values = minimised(result, self._objectives)
        if math.isnan(values[self._trained]):
            return TrialScheduler.CONTINUE
        if self.rungs.decide(int(trial.config["trial"]), int(epoch), values):
            return TrialScheduler.CONTINUE
        self.stopped += 1
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {level}: {len(self.rungs.records[level])}"
                          for level in self.rungs.levels)
        return f"Using MO-ASHA: {self.stopped} stopped; trials recorded at {rungs}"
