"""Every sampler a spec may name survives the pickle round trips Ray makes (Tuner creation,
experiment saves) and draws after one exactly as it would have without it."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import optuna
import pytest

from nas import spec as specs
from nas.samplers import make_sampler
from nas.searcher import make_searcher
from nas.sections import SAMPLERS

QUICK = Path(__file__).resolve().parents[2] / "configs" / "quick.yaml"
CONSTRAINED = ("constraints=[latency_ms <= 2.0]",)


def objective(trial: optuna.Trial) -> tuple[float, float]:
    x, k = trial.suggest_float("x", 0.0, 4.0), trial.suggest_int("k", 1, 5)
    trial.set_user_attr("latency_ms", x)  # what the constraints function reads
    return x * k, (x - 2.0) ** 2 + k


def draws(sampler: optuna.samplers.BaseSampler, n: int, *, pickle_after: int | None = None,
          ) -> list[dict]:
    """The parameters of ``n`` trials asked and told on one study; the sampler is replaced
    by its own pickle round trip after ``pickle_after`` trials."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for i in range(n):
        if i == pickle_after:
            study.sampler = pickle.loads(pickle.dumps(study.sampler))
        trial = study.ask()
        study.tell(trial, objective(trial))
    return [t.params for t in study.trials]


@pytest.mark.parametrize("constraints", [(), CONSTRAINED], ids=["plain", "constrained"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_draws_the_same_after_a_pickle_round_trip(name, constraints):
    spec = specs.load(QUICK, [f"sampler.name={name}", "sampler.population_size=4",
                              *constraints])
    reference = draws(make_sampler(spec), 14)  # several NSGA-II generations of 4
    assert draws(make_sampler(spec), 14, pickle_after=7) == reference
    assert len({tuple(sorted(p.items())) for p in reference[7:]}) > 1  # draws that vary


@pytest.mark.parametrize("name", SAMPLERS)
def test_unpickled_sampler_has_working_locks_of_its_own(name):
    sampler = make_sampler(specs.load(QUICK, [f"sampler.name={name}"]))
    copy = pickle.loads(pickle.dumps(sampler))
    locks = {k for k, v in vars(sampler).items() if hasattr(v, "acquire")}
    for attr in locks:  # a fresh lock of the same kind, not the original's
        assert type(getattr(copy, attr)) is type(getattr(sampler, attr))
        assert getattr(copy, attr) is not getattr(sampler, attr)
        with getattr(copy, attr):
            pass
    if name == "nsga2" and optuna.__version__ >= "5.1":
        assert locks  # the case this exists for: Optuna 5.1 keeps a threading.Lock
    assert all(not isinstance(v, type(threading.Lock())) for v in sampler.__getstate__().values())


@pytest.mark.parametrize("name", SAMPLERS)
def test_searcher_survives_the_pickles_ray_makes(tmp_path, name):
    spec = specs.load(QUICK, [f"sampler.name={name}", "trials=4"])
    searcher = make_searcher(spec, f"sqlite:///{tmp_path / 'study.db'}")
    first = searcher.suggest("a")
    copy = pickle.loads(pickle.dumps(searcher))  # what Tuner(...) does with the searcher
    assert copy.suggest("b")["trial"] == 1
    searcher.save(str(tmp_path / "searcher.pkl"))  # what Ray does at experiment saves
    restored = make_searcher(spec, f"sqlite:///{tmp_path / 'other.db'}")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored._ot_trials.keys() == {"a"} and first["trial"] == 0
    assert restored.suggest("c")["candidate"]
