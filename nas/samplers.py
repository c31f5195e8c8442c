"""The spec's Optuna sampler, in a form that survives pickle.

Ray pickles the searcher, and with it the sampler, when it creates the Tuner and whenever it
saves the experiment. Optuna 5.1's ``NSGAIISampler`` (and ``NSGAIIISampler``) keeps a
``threading.Lock`` as an attribute, which pickle refuses. :class:`LockFree` is mixed into
every sampler a spec can name: its pickled state leaves each lock out (naming its kind), and
unpickling makes a fresh one. A lock guards nothing across a pickle round trip (it is never
held while the sampler is pickled between draws), so a new unlocked one is the same state.
Optuna itself is not patched.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .spec import Constraint, SearchSpec

# the kinds of lock a sampler may hold, each with how to make a fresh one (a function that
# pickles by reference)
LOCKS: dict[type, Callable[[], Any]] = {type(make()): make
                                        for make in (threading.Lock, threading.RLock)}


@dataclasses.dataclass(frozen=True)
class _Lock:
    """Stands for a lock in a pickled state; ``make`` makes a fresh one of its kind."""

    make: Callable[[], Any]


class LockFree:
    """Pickles without the locks in the instance's attributes and makes new ones when
    unpickled. Mixed in before the Optuna sampler class."""

    def __getstate__(self) -> dict[str, Any]:
        return {name: _Lock(LOCKS[type(value)]) if type(value) in LOCKS else value
                for name, value in vars(self).items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update({name: value.make() if isinstance(value, _Lock) else value
                           for name, value in state.items()})


class NSGAIISampler(LockFree, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable."""


class TPESampler(LockFree, optuna.samplers.TPESampler):
    """Optuna's TPE, picklable."""


class RandomSampler(LockFree, optuna.samplers.RandomSampler):
    """Optuna's random sampler, picklable."""


def make_sampler(spec: SearchSpec, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler; ``offset`` (the trials a resumed study has) moves its seed, so a
    resumed sampler does not replay the draws it made before."""
    s = dataclasses.replace(spec.sampler, seed=spec.sampler.seed + offset)
    constraints = Violations(spec.constraints) if spec.constraints else None
    if s.name == "nsga2":
        return NSGAIISampler(population_size=s.population_size, seed=s.seed,
                             constraints_func=constraints)
    if s.name == "tpe":
        return TPESampler(seed=s.seed, constraints_func=constraints)
    if s.name == "random":
        return RandomSampler(seed=s.seed)
    raise ValueError(f"no sampler named {s.name!r}")  # the spec allows only SAMPLERS


class Violations:
    """Optuna constraints function: one value per constraint, <= 0 where it holds.

    A class, not a closure: Ray saves the searcher (and its sampler) with pickle.
    """

    def __init__(self, constraints: Sequence[Constraint]) -> None:
        self.constraints = tuple(constraints)

    def __call__(self, trial: FrozenTrial) -> Sequence[float]:
        return [c.violation(float(trial.user_attrs.get(c.metric, float("inf"))))
                for c in self.constraints]
