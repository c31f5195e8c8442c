"""Datasets by name: real Fashion-MNIST files, sklearn digits, synthetic, an ImageFolder tree."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search_spaces.config import ConfigError
from trainers import sources
from trainers.data import DataSettings, load_data, split_indices
from trainers.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_ENV, read_idx


def _all(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + dims + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_fashion(folder: Path, n_train: int = 40, n_test: int = 10) -> None:
    """Tiny IDX files: train images gzipped, the rest raw, pixels = label * 20."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, compress in (("train", n_train, True), ("t10k", n_test, False)):
        labels = np.arange(n) % 10
        images = np.repeat(labels * 20, 28 * 28).reshape(n, 28, 28)
        suffix = ".gz" if compress else ""
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress=compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress=compress)


# --- Fashion-MNIST ---------------------------------------------------------------------------


def test_read_idx_parses_the_real_fashion_mnist_headers() -> None:
    folder = sources.find_fashion_mnist()
    images = read_idx(str(folder / "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(str(folder / "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10


def test_fashion_mnist_subset_shapes_classes_and_normalisation() -> None:
    data = load_data("fashion-mnist", train_size=1000, val_size=200)
    assert (data.num_classes, data.in_chans, data.img_size) == (10, 1, 28)
    assert data.class_names == FASHION_MNIST_CLASSES and data.class_names[9] == "Ankle boot"
    assert (len(data.train), len(data.val)) == (1000, 200)
    assert data.mean[0] == pytest.approx(0.286, abs=0.02)  # Fashion-MNIST's known statistics
    assert data.std[0] == pytest.approx(0.353, abs=0.02)
    x, y = _all(data.train_batches(128, epoch=0, seed=0))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (896, 1, 28, 28)  # 7 full batches: the incomplete one is dropped
    x, y = _all(data.val_batches(64))
    assert x.shape == (200, 1, 28, 28) and y.min() >= 0 and y.max() <= 9
    assert np.bincount(y.numpy(), minlength=10).tolist() == [20] * 10  # stratified
    x, _ = _all(data.train.batches(1000, shuffle_seed=None, drop_last=False))
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4)  # normalised in the pipeline
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_fashion_mnist_resize_and_test_split() -> None:
    data = load_data("fashion-mnist", img_size=32, train_size=100, val_size=50, load_test=True,
                     test_size=300)  # fmt: skip
    x, y = next(data.test_batches(300))
    assert x.shape == (300, 1, 32, 32) and len(data.test) == 300
    assert np.bincount(y.numpy(), minlength=10).tolist() == [30] * 10
    assert data.describe()["test_size"] == 300 and data.describe()["img_size"] == 32
    with pytest.raises(RuntimeError, match="load_test=True"):
        load_data("fashion-mnist", train_size=10, val_size=10).test_batches(8)


def test_fashion_mnist_search_order_data_dir_then_env(tmp_path, monkeypatch) -> None:
    _fake_fashion(tmp_path / "given", n_train=40)
    _fake_fashion(tmp_path / "env", n_train=30)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "env"))
    given = load_data("fashion-mnist", data_dir=str(tmp_path / "given"), val_size=10,
                      load_test=True)  # fmt: skip
    assert (len(given.train), len(given.val), len(given.test)) == (30, 10, 10)
    x, y = next(given.test_batches(10))
    pixels = x * given.std[0] + given.mean[0]  # undo the normalisation: label * 20 / 255
    assert torch.allclose(pixels[:, 0, 0, 0], y.float() * 20 / 255, atol=1e-5)
    from_env = load_data("fashion-mnist", val_size=10)
    assert len(from_env.train) == 20


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "debian"))
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        load_data("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "debian") in message


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path) -> None:
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(bad))


# --- splits ----------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(5), [100, 200, 300, 150, 250])
    train, val = split_indices(labels, train_size=400, val_size=100, seed=3)
    again_train, again_val = split_indices(labels, train_size=400, val_size=100, seed=3)
    other_train, _ = split_indices(labels, train_size=400, val_size=100, seed=4)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(train, other_train)
    assert len(np.intersect1d(train, val)) == 0 and (len(train), len(val)) == (400, 100)
    assert np.abs(np.bincount(labels[val]) - [10, 20, 30, 15, 25]).max() <= 1


def test_data_splits_are_seeded_and_disjoint() -> None:
    a = load_data("digits", seed=1)
    b = load_data("digits", seed=1)
    c = load_data("digits", seed=2)
    assert np.array_equal(a.train.indices, b.train.indices)
    assert np.array_equal(a.val.indices, b.val.indices)
    assert not np.array_equal(a.val.indices, c.val.indices)
    assert len(np.intersect1d(a.train.indices, a.val.indices)) == 0


def test_train_batches_depend_only_on_seed_and_epoch() -> None:
    data = load_data("synthetic", train_size=64, val_size=16)
    first = _all(data.train_batches(16, epoch=0, seed=7))[1]
    assert torch.equal(first, _all(data.train_batches(16, epoch=0, seed=7))[1])
    assert not torch.equal(first, _all(data.train_batches(16, epoch=1, seed=7))[1])
    assert not torch.equal(first, _all(data.train_batches(16, epoch=0, seed=8))[1])
    assert torch.equal(first.sort().values, data.train.labels.sort().values)  # each once
    assert len(list(data.train_batches(100, epoch=0, seed=0))) == 1  # never drop the only one
    assert data.train_steps(100) == 1 and data.train_steps(16) == 4


# --- digits and synthetic --------------------------------------------------------------------


def test_digits_shapes_classes_and_fixed_test_split() -> None:
    data = load_data("digits", img_size=16, load_test=True)
    assert (data.num_classes, data.in_chans, data.img_size) == (10, 1, 16)
    assert data.class_names == tuple("0123456789")
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert len(data.test) == 359 and len(data.val) == 143
    x, y = next(data.val_batches(32))
    assert x.shape == (32, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    other = load_data("digits", seed=5, load_test=True)  # the test split ignores the seed
    assert torch.equal(data.test.labels, other.test.labels)
    assert torch.equal(data.test.images, other.test.images)


def test_synthetic_is_configurable_and_seeded() -> None:
    data = load_data("synthetic", in_chans=1, num_classes=4, img_size=12, train_size=40,
                     val_size=8, load_test=True, test_size=20)  # fmt: skip
    assert (data.num_classes, data.in_chans, data.img_size) == (4, 1, 12)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 8, 20)
    x, y = next(data.train_batches(8, epoch=0, seed=0))
    assert x.shape == (8, 1, 12, 12) and int(y.max()) < 4
    same = load_data("synthetic", in_chans=1, num_classes=4, img_size=12, train_size=40,
                     val_size=8)  # fmt: skip
    other = load_data("synthetic", in_chans=1, num_classes=4, img_size=12, train_size=40,
                      val_size=8, seed=1)  # fmt: skip
    assert torch.equal(data.train.images, same.train.images)
    assert not torch.equal(data.train.images, other.train.images)
    assert not torch.equal(data.train.images[:20], data.test.images)


# --- folder:PATH -----------------------------------------------------------------------------


def _png_tree(root: Path, splits: dict[str, int]) -> None:
    """Class folders of solid-colour PNGs: red ``cat``s, blue ``dog``s, sizes vary."""
    colours = {"cat": (220, 30, 30), "dog": (30, 30, 220)}
    for split, per_class in splits.items():
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = Image.new("RGB", (20 + i, 24), colour)
                image.save(root / split / name / f"{i}.png")


def test_folder_carves_val_from_train_and_uses_timm_transforms(tmp_path) -> None:
    _png_tree(tmp_path, {"train": 6})
    data = load_data(f"folder:{tmp_path}", img_size=16, val_size=4)
    assert data.class_names == ("cat", "dog") and (data.num_classes, data.in_chans) == (2, 3)
    assert (len(data.train), len(data.val)) == (8, 4)
    x, y = _all(data.val_batches(3))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert sorted(y.tolist()) == [0, 0, 1, 1]
    red_minus_blue = x[:, 0].mean(dim=(1, 2)) - x[:, 2].mean(dim=(1, 2))
    assert torch.all((red_minus_blue > 0) == (y == 0))  # cats are red after normalisation
    x, y = _all(data.train_batches(4, epoch=0, seed=0))
    assert x.shape == (8, 3, 16, 16)
    assert data.describe()["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_folder_uses_val_and_test_folders(tmp_path) -> None:
    _png_tree(tmp_path, {"train": 4, "val": 2, "test": 3})
    data = load_data(f"folder:{tmp_path}", img_size=8, load_test=True)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 6)
    x, y = _all(data.test_batches(4))
    assert x.shape == (6, 3, 8, 8) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_folder_without_test_folder_rejects_load_test(tmp_path) -> None:
    _png_tree(tmp_path, {"train": 3})
    with pytest.raises(ConfigError, match="load_test"):
        load_data(f"folder:{tmp_path}", img_size=8, val_size=2, load_test=True)
    with pytest.raises(FileNotFoundError, match="train"):
        load_data(f"folder:{tmp_path / 'missing'}")


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"name": "cifar"}, "name"),
        ({"name": "folder:"}, "name"),
        ({"name": "digits", "img_size": 0}, "img_size"),
        ({"name": "digits", "in_chans": 3}, "in_chans"),
        ({"name": "synthetic", "num_classes": 1}, "num_classes"),
        ({"name": "digits", "num_workers": -1}, "num_workers"),
    ],
)
def test_data_settings_errors_name_the_field(options, field) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        DataSettings(**options)


def test_sizes_larger_than_the_pool_are_rejected() -> None:
    with pytest.raises(ConfigError, match="`val_size`"):
        load_data("digits", val_size=5000)
    with pytest.raises(ConfigError, match="`train_size`"):
        load_data("digits", train_size=1400, val_size=100)


def test_settings_round_trip_and_load_data_accepts_them() -> None:
    settings = DataSettings(name="synthetic", train_size=32, val_size=8, img_size=8)
    assert DataSettings.from_dict(settings.to_dict()) == settings
    assert len(load_data(settings).train) == 32
    with pytest.raises(TypeError):
        load_data(settings, seed=3)
