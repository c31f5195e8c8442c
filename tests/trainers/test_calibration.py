"""The calibration split: held out of the training pool beside train and val, seeded,
disjoint, and only as large as asked or as what train and val leave over."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces.config import ConfigError
from trainers.data import load_data
from trainers.dataset import carve


def test_calibration_is_disjoint_seeded_and_leaves_train_and_val_unchanged() -> None:
    labels = np.arange(200) % 4
    train, val, cal = carve(labels, train_size=100, val_size=40, calibration_size=30, seed=3)
    assert (len(train), len(val), len(cal)) == (100, 40, 30)
    assert not set(cal) & (set(train) | set(val))
    assert set(labels[cal].tolist()) == {0, 1, 2, 3}  # stratified
    plain = carve(labels, train_size=100, val_size=40, calibration_size=0, seed=3)
    assert np.array_equal(plain[0], train) and np.array_equal(plain[1], val)
    again = carve(labels, train_size=100, val_size=40, calibration_size=30, seed=3)
    assert np.array_equal(again[2], cal)
    # default: what train and val leave over, at most 10% of the pool; none with train None
    assert len(carve(labels, train_size=100, val_size=40, calibration_size=None,
                     seed=3)[2]) == 20
    assert len(carve(labels, train_size=170, val_size=20, calibration_size=None,
                     seed=3)[2]) == 10
    train_all, _, none = carve(labels, train_size=None, val_size=40, calibration_size=None,
                               seed=3)
    assert len(none) == 0 and len(train_all) == 160
    asked = carve(labels, train_size=None, val_size=40, calibration_size=50, seed=3)
    assert (len(asked[0]), len(asked[2])) == (110, 50)
    with pytest.raises(ConfigError, match="calibration_size"):
        carve(labels, train_size=150, val_size=40, calibration_size=20, seed=3)


def test_loaded_data_serves_calibration_batches_or_says_which_setting() -> None:
    data = load_data("synthetic", in_chans=1, num_classes=3, img_size=8, train_size=30,
                     val_size=10, calibration_size=12)
    x, y = next(data.calibration_batches(8))
    assert x.shape == (8, 1, 8, 8) and len(data.calibration) == 12
    assert data.describe()["calibration_size"] == 12
    none = load_data("synthetic", in_chans=1, num_classes=3, img_size=8, train_size=30,
                     val_size=10)
    assert none.calibration is None
    with pytest.raises(ValueError, match="data.calibration_size"):
        next(none.calibration_batches(8))
