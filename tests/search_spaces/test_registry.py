"""Every registered family: suggest -> build -> forward -> backward, configs, presets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import optuna
import pytest
import torch

import search_spaces
from search_spaces.dims import Choice, Dim, Fixed
from search_spaces.output import logits_of
from trainers.losses import objective_for

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)

NAMES = search_spaces.names()
# Narrowings that make a family run on 28x28 single-channel images (fashion-mnist size).
SMALL_DIMS: dict[str, dict[str, Dim]] = {
    "vit": {"img_size": Fixed(28), "patch_size": Choice((4, 7))},
}


def small_dims(name: str) -> dict[str, Dim]:
    space = search_spaces.get(name)
    default = {"img_size": Fixed(28)} if "img_size" in space.dims else {}
    return SMALL_DIMS.get(name, default)


def first_values(dims: Mapping[str, Dim]) -> dict:
    return {name: dim.values()[0] for name, dim in dims.items()}


def check_trains(space: search_spaces.SearchSpace, config: search_spaces.Config) -> None:
    model = space.build(config, num_classes=10, in_chans=1)
    size = config.img_size
    x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    out = model(x)
    logits = logits_of(out)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    objective = objective_for(config)  # an adaptive family's own terms reach its parts too
    loss = logits.logsumexp(-1).sum() if objective is None else objective(out, torch.arange(2))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{space.name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{space.name}: {pname} has non-finite gradient"


def test_at_least_the_vit_family_is_registered() -> None:
    assert "vit" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_small_narrowing_passes_the_family_check(name: str) -> None:
    space = search_spaces.get(name)
    space.check_dims({**space.dims, **small_dims(name)})


@pytest.mark.parametrize("name", NAMES)
def test_fixed_trial_of_first_choices_builds_and_trains(name: str) -> None:
    space = search_spaces.get(name)
    dims = {**space.dims, **small_dims(name)}
    trial = optuna.trial.FixedTrial(first_values(dims))
    config = space.suggest(trial, small_dims(name))
    assert isinstance(config, space.config_cls)
    check_trains(space, config)


@pytest.mark.parametrize("name", NAMES)
def test_random_sampler_trials_build_and_train(name: str) -> None:
    space = search_spaces.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        config = space.suggest(trial, small_dims(name))
        check_trains(space, config)
        assert trial.params  # the draw was recorded by optuna
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_config_json_round_trip_and_stable_key(name: str) -> None:
    space = search_spaces.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        config = space.suggest(study.ask(), small_dims(name))
        again = space.config_cls.from_json(config.to_json())
        assert again == config
        assert again.key() == config.key()
        assert space.config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", NAMES)
def test_presets_validate_and_build(name: str) -> None:
    space = search_spaces.get(name)
    assert space.presets, f"{name} has no presets"
    for preset, config in space.presets.items():
        assert type(config).from_dict(config.to_dict()) == config, preset
        model = space.build(config, num_classes=1000, in_chans=3)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_build_rejects_another_family_config() -> None:
    space = search_spaces.get("vit")
    other = [n for n in NAMES if n != "vit"]
    if not other:
        pytest.skip("only one family registered")
    foreign = next(iter(search_spaces.get(other[0]).presets.values()))
    with pytest.raises(search_spaces.ConfigError, match="vit"):
        space.build(foreign, num_classes=10)


def test_importing_search_spaces_imports_neither_ray_nor_optuna() -> None:
    code = ("import search_spaces, sys; "
            "assert 'ray' not in sys.modules and 'optuna' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", search_spaces.names())
def test_summarize_names_what_differs_from_the_default(name):
    space = search_spaces.get(name)
    default = space.config_cls()
    assert space.summarize(default) == "default"
    changed = default.replace(img_size=default.img_size * 2)
    assert space.summarize(changed) == f"img_size={default.img_size * 2}"
