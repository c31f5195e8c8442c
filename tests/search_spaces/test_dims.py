"""search_spaces.dims: narrowing a family's default domains from a spec, and suggesting."""

from __future__ import annotations

from typing import Any

import pytest

from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Fixed, FloatRange, IntRange, narrow
from search_spaces.efficientvit import DIMS as EV_DIMS


class RecordingTrial:
    """Answers suggest_* with the first allowed value and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.calls.append(("categorical", name, tuple(choices)))
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        self.calls.append(("int", name, low, high, step))
        return low

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.calls.append(("float", name, low, high, log))
        return low


PATCH = Choice((2, 4, 7, 8))
DEPTH = IntRange(2, 12)
LR = FloatRange(1e-4, 1e-1, log=True)


@pytest.mark.parametrize(("default", "given", "expected"), [
    (PATCH, 4, Fixed(4)),
    (DEPTH, 5, Fixed(5)),
    (Choice(("mhsa", "cga")), "cga", Fixed("cga")),
    (PATCH, [7, 2], Choice((7, 2))),
    (PATCH, [8], Fixed(8)),
    (Choice((None, 16)), None, Fixed(None)),
    (DEPTH, [3, 6], Choice((3, 6))),
    (DEPTH, {"low": 3, "high": 6}, IntRange(3, 6, 1)),
    (DEPTH, {"low": 4, "high": 12, "step": 4}, IntRange(4, 12, 4)),
    (LR, {"low": 1e-3, "high": 1e-2}, FloatRange(1e-3, 1e-2, log=True)),
    (LR, {"low": 1e-3, "high": 1e-2, "log": False}, FloatRange(1e-3, 1e-2, log=False)),
    (Choice(((1, 2), (3, 4))), [[3, 4]], Fixed((3, 4))),
])
def test_narrow_parses_scalar_list_and_range(default, given, expected) -> None:
    assert narrow("x", default, given) == expected


@pytest.mark.parametrize(("default", "given", "words"), [
    (PATCH, 5, ["5", "[2, 4, 7, 8]"]),
    (PATCH, [4, 16], ["16"]),
    (PATCH, [], ["empty"]),
    (PATCH, {"low": 2, "high": 4}, ["range", "[2, 4, 7, 8]"]),
    (DEPTH, 13, ["13", "[2, 12]"]),
    (DEPTH, 2.5, ["2.5"]),
    (DEPTH, True, ["True"]),
    (DEPTH, "3", ["'3'"]),
    (DEPTH, {"low": 1, "high": 4}, ["[1, 4]", "[2, 12]"]),
    (DEPTH, {"low": 6, "high": 3}, ["low <= high"]),
    (DEPTH, {"low": 3}, ["low and high"]),
    (DEPTH, {"low": 3, "high": 4, "by": 1}, ["low and high"]),
    (Fixed(224), 28, ["28", "[224]"]),
])
def test_narrow_rejects_values_outside_the_domain(default, given, words) -> None:
    with pytest.raises(ConfigError) as err:
        narrow("patch_size", default, given)
    message = str(err.value)
    assert message.startswith("space.dims.patch_size:"), message
    assert all(w in message for w in words), message


@pytest.mark.parametrize(("name", "given", "words"), [
    ("key_dim", 16.0, ["16.0 (float)", "[8, 16, 32]"]),
    ("num_stages", 2.0, ["2.0 (float)", "[1, 2, 3, 4]"]),
    ("depth_2", 2.0, ["2.0 (float)", "integers in [1, 4]"]),
    ("sandwich", True, ["True (bool)", "[1, 2]"]),
    ("key_dim", [8, 16.0], ["16.0 (float)"]),
    ("depth_2", {"low": 1.5, "high": 3}, ["low=1.5", "an integer", "[1, 4]"]),
    ("depth_2", {"low": "a", "high": 3}, ["low='a'", "an integer"]),
    ("depth_2", {"low": 1, "high": 3.0}, ["high=3.0", "an integer"]),
    ("depth_2", {"low": 1, "high": 3, "step": 0}, ["step=0", "integer >= 1"]),
    ("depth_2", {"low": 1, "high": 3, "step": 1.5}, ["step=1.5"]),
    ("depth_2", {"low": 1, "high": 3, "step": True}, ["step=True"]),
    ("depth_2", {"low": 1, "high": 3, "log": True}, ["optional step"]),
])
def test_narrow_rejects_values_of_the_wrong_type(name: str, given: Any, words: list) -> None:
    with pytest.raises(ConfigError) as err:
        narrow(name, EV_DIMS[name], given)
    message = str(err.value)
    assert message.startswith(f"space.dims.{name}:"), message
    assert all(w in message for w in words), message


@pytest.mark.parametrize(("default", "given", "words"), [
    (LR, {"low": "a", "high": 0.1}, ["low='a'", "a number"]),
    (LR, {"low": 1e-3, "high": 1e-2, "log": "yes"}, ["log='yes'", "true or false"]),
    (FloatRange(0.0, 1.0), {"low": 0.0, "high": 1.0, "log": True}, ["log=True", "low > 0"]),
    (LR, {"low": 1e-3, "high": 1e-2, "step": 1}, ["optional log"]),
    (LR, True, ["True (bool)"]),
    (Choice((0.5, 1.0)), False, ["False (bool)"]),
    (Choice((True, False)), 1, ["1 (int)"]),
    (Choice(((1, 2), (3, 4))), [[3.0, 4]], ["[3.0, 4]"]),
    (IntRange(2, 12, 2), 5, ["5", "step 2"]),
    (IntRange(2, 12, 2), {"low": 3, "high": 8}, ["low=3", "grid"]),
    (IntRange(2, 12, 2), {"low": 4, "high": 8, "step": 3}, ["step=3", "multiple of 2"]),
])
def test_narrow_raises_config_errors_for_bad_ranges_and_types(default, given, words) -> None:
    with pytest.raises(ConfigError) as err:  # never a TypeError or ValueError
        narrow("x", default, given)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_an_int_matches_a_float_option_and_is_stored_as_that_float() -> None:
    fixed = narrow("ffn_ratio", EV_DIMS["ffn_ratio"], 2)
    assert fixed == Fixed(2.0) and isinstance(fixed.value, float)
    choice = narrow("ffn_ratio", EV_DIMS["ffn_ratio"], [2, 3.0])
    assert choice == Choice((2.0, 3.0)) and all(type(v) is float for v in choice.options)
    assert narrow("x", Choice(((1.0, 2.0),)), [[1, 2]]) == Fixed((1.0, 2.0))
    assert type(narrow("x", LR, 1e-2).value) is float
    ranged = narrow("x", FloatRange(0.0, 4.0), {"low": 1, "high": 2})
    assert ranged == FloatRange(1.0, 2.0) and type(ranged.low) is float
    assert narrow("x", Choice((True, False)), False) == Fixed(False)


@pytest.mark.parametrize("dim", [Choice((2, 4, 7)), IntRange(2, 12, 2), FloatRange(0.1, 1.0)])
def test_to_spec_narrows_back_to_the_same_dim(dim) -> None:
    assert narrow("x", dim, dim.to_spec()) == dim


def test_values_enumerate_the_domain() -> None:
    assert IntRange(2, 8, 3).values() == (2, 5, 8)
    assert Choice((4, 7)).values() == (4, 7)
    assert Fixed("a").values() == ("a",)


def test_suggest_calls_the_trial_by_name() -> None:
    trial = RecordingTrial()
    assert Fixed(3).suggest(trial, "a") == 3
    assert Choice((7, 4)).suggest(trial, "b") == 7
    assert IntRange(2, 12, 2).suggest(trial, "c") == 2
    assert FloatRange(0.1, 1.0, log=True).suggest(trial, "d") == 0.1
    assert trial.calls == [
        ("categorical", "b", (7, 4)),
        ("int", "c", 2, 12, 2),
        ("float", "d", 0.1, 1.0, True),
    ]
