"""search_spaces.config: frozen configs, JSON round trips, unknown fields, stable keys."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from search_spaces.config import Config, ConfigError, check, check_int
from search_spaces.efficientvit import EfficientViTConfig
from search_spaces.vit import ViTConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy(Config):
    widths: tuple[int, ...] = (8, 16)
    ratio: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        check(all(w > 0 for w in self.widths), f"`widths`={self.widths} must all be > 0")


def test_from_dict_names_unknown_fields_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        Toy.from_dict({"widths": [1], "heads": 2})
    assert "'heads'" in str(err.value) and "'widths'" in str(err.value)


def test_lists_come_back_as_tuples_and_ints_as_floats() -> None:
    toy = Toy.from_dict({"widths": [3, 4], "ratio": 2})
    assert toy.widths == (3, 4) and isinstance(toy.widths, tuple)
    assert toy.ratio == 2.0 and isinstance(toy.ratio, float)
    assert Toy.from_json(toy.to_json()) == toy
    assert toy.to_dict() == {"widths": [3, 4], "ratio": 2.0, "name": None}


def test_from_dict_validates() -> None:
    with pytest.raises(ConfigError, match="`widths`"):
        Toy.from_dict({"widths": [3, 0]})


def test_replace_validates_and_configs_are_frozen() -> None:
    with pytest.raises(ConfigError, match="`num_heads`=5"):
        ViTConfig().replace(num_heads=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ViTConfig().depth = 3  # type: ignore[misc]


def test_key_is_short_hex_and_follows_content() -> None:
    key = Toy(widths=(1, 2)).key()
    assert len(key) == 12 and int(key, 16) >= 0
    assert Toy(widths=(1, 2)).key() == key
    assert Toy(widths=(2, 1)).key() != key
    assert Toy(widths=(1, 2), name="a").key() != key


def test_key_is_the_same_in_another_process() -> None:
    config = ViTConfig(embed_dim=96, depth=4, num_heads=2, qk_dim=16, attn="cga", sandwich=1)
    code = ("from search_spaces.vit import ViTConfig; "
            f"print(ViTConfig.from_json({config.to_json()!r}).key())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "12345"}  # another seed
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    assert done.stdout.strip() == config.key()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ratios(Config):
    ratios: tuple[float, ...] = (1.0, 2.0)
    scale: float | None = None
    count: int = 1


def test_equal_configs_have_one_key_whatever_the_number_type() -> None:
    two, two_f = EfficientViTConfig(ffn_ratio=2), EfficientViTConfig(ffn_ratio=2.0)
    assert two == two_f and two.key() == two_f.key()
    assert two.to_dict()["ffn_ratio"] == 2.0 and isinstance(two.to_dict()["ffn_ratio"], float)
    ints = Ratios(ratios=(1, 2), scale=3)
    assert ints.to_dict() == {"ratios": [1.0, 2.0], "scale": 3.0, "count": 1}
    assert [type(r) for r in ints.to_dict()["ratios"]] == [float, float]
    assert ints.key() == Ratios(ratios=(1.0, 2.0), scale=3.0).key()
    assert isinstance(Ratios(count=2).to_dict()["count"], int)  # int fields stay ints


@pytest.mark.parametrize(("value", "low"), [(0, 1), (-1, 0), (True, 0), (2.0, 1), ("3", 1)])
def test_check_int_rejects_non_integers_and_small_ones(value, low) -> None:
    with pytest.raises(ConfigError) as err:
        check_int("depth", value, low)
    assert str(err.value) == f"`depth`={value!r} must be an integer >= {low}"


def test_check_int_accepts_integers_at_or_above_low() -> None:
    check_int("depth", 1, 1)
    check_int("sandwich", 0, 0)
