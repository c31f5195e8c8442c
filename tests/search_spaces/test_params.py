"""``SearchSpace.params``: the inverse of ``suggest`` (what to enqueue to get a config back)."""

from __future__ import annotations

import optuna
import pytest

import search_spaces
from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Fixed, IntRange, Replay, narrow
from search_spaces.efficientvit import EfficientViTConfig
from search_spaces.vit import ViTConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

NARROWED = {  # per family: narrowed dims as specs write them (fixed values, lists, ranges)
    "efficientvit": {"stem_stride": 4, "num_stages": [2, 3],
                     "width_1": [16, 32], "depth_2": {"low": 1, "high": 2},
                     "heads_3": [1, 2], "key_dim": [8, 16], "window_size": 7},
    "vit": {"patch_size": [4, 7], "depth": {"low": 2, "high": 4},
            "attn": "mhsa", "v_dim": [None, 16], "token_policy": ["static", "halting"],
            "halt_beta": -5.0},
}


def narrowed(space: search_spaces.SearchSpace) -> dict:
    given = NARROWED.get(space.name, {}).items()  # other families: as registered
    return {"img_size": Fixed(28), **{k: narrow(k, space.dims[k], v) for k, v in given}}


@pytest.mark.parametrize("name", search_spaces.names())
@pytest.mark.parametrize("narrow_dims", [False, True])
def test_params_round_trip_over_random_draws(name: str, narrow_dims: bool) -> None:
    space = search_spaces.get(name)
    dims = narrowed(space) if narrow_dims else None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(150):
        trial = study.ask()
        config = space.suggest(trial, dims)
        params = space.params(config, dims)
        assert params == trial.params  # exactly what Optuna recorded for the draw
        assert space.suggest(optuna.trial.FixedTrial(params), dims) == config
        assert space.from_params(params, dims) == config


def test_conditional_knobs_are_left_out() -> None:
    space = search_spaces.get("vit")
    cga = ViTConfig(img_size=28, patch_size=7, embed_dim=48, depth=2, num_heads=2, qk_dim=8,
                    attn="cga")
    dims = {"img_size": Fixed(28)}
    params = space.params(cga, dims)
    assert "v_dim" not in params and not any(k.startswith("halt_") for k in params)
    assert params["attn"] == "cga" and "img_size" not in params  # Fixed: never asked
    halting = cga.replace(attn="mhsa", v_dim=16, token_policy="halting", halt_beta=-5.0,
                          halt_target=0.5)
    params = space.params(halting, dims)
    assert params["v_dim"] == 16 and params["halt_beta"] == -5.0
    assert "halt_eps" not in params  # Fixed: the draw never asks the trial for it


def test_efficientvit_params_per_stage_and_kernels_as_drawn() -> None:
    space = search_spaces.get("efficientvit")
    config = space.presets["m4"].replace(embed_dims=(128, 256), depths=(1, 3),
                                         num_heads=(2, 4), v_ratio=0.5)
    assert space.params(config) == {
        "num_stages": 2, "stem_stride": 16, "width_1": 128, "width_2": 256, "depth_1": 1,
        "depth_2": 3, "heads_1": 2, "heads_2": 4, "key_dim": 16, "v_ratio": 0.5,
        "ffn_ratio": 2.0, "sandwich": 1, "kernels": "7,5,3,3", "window_size": 7}
    with pytest.raises(ConfigError, match="heads_2"):  # M1's 3 heads: not a default choice
        space.params(space.presets["m1"])


def test_configs_no_draw_gives_are_errors() -> None:
    vit = search_spaces.get("vit")
    with pytest.raises(ConfigError, match="qk_dim"):  # None is not among its choices
        vit.params(vit.presets["deit_tiny"])
    with pytest.raises(ConfigError, match="v_dim"):  # cga draws no v_dim
        vit.params(ViTConfig(patch_size=16, qk_dim=16, v_dim=64, attn="cga", num_heads=3))
    with pytest.raises(ConfigError, match="halt_beta"):  # a static draw keeps the default
        vit.params(ViTConfig(patch_size=16, qk_dim=16, v_dim=16, halt_beta=-5.0))
    evit = search_spaces.get("efficientvit")
    m0 = evit.presets["m0"]
    with pytest.raises(ConfigError, match="width_1"):
        evit.params(m0.replace(embed_dims=(80, 128, 192), num_heads=(1, 4, 4)))
    with pytest.raises(ConfigError, match="depth_2"):  # outside a narrowed range
        evit.params(m0, {"depth_2": IntRange(1, 1)})
    with pytest.raises(ConfigError, match="img_size"):  # a Fixed dim with another value
        evit.params(m0, {"img_size": Fixed(32)})
    with pytest.raises(ConfigError, match="key_dim"):
        evit.params(m0, {"key_dim": Choice((8, 32))})


def test_replay_answers_and_notes_what_is_asked() -> None:
    replay = Replay({"a": 1, "b": 2.5, "c": "x"})
    assert replay.suggest_int("a", 0, 3) == 1 and replay.suggest_float("b", 0, 3) == 2.5
    assert list(replay.asked) == ["a", "b"]
    with pytest.raises(ConfigError, match="'d'"):
        replay.suggest_categorical("d", ("x",))
    space = search_spaces.get("efficientvit")
    assert space.from_params(space.params(EfficientViTConfig())) == EfficientViTConfig()
