"""What a loaded dataset is (``DataSettings``, ``Data``, splits) and how it is split and batched.

The sources of tensor datasets (trainers/sources.py) and image folders (trainers/folder.py)
build on this module; trainers/data.py's ``load_data`` picks the source by name (its
docstring says how splits, devices and resolutions work).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces.config import Config, check

Batch = tuple[torch.Tensor, torch.Tensor]
Samples = list[tuple[str, int]]

NAMES = ("fashion-mnist", "digits", "synthetic", "folder:PATH")
MAX_DEFAULT_VAL = 5000  # val_size=None takes 10% of the training pool, at most this many
MAX_DEFAULT_CALIBRATION = 1000  # calibration_size=None: 10% of the pool at most, this many
SYNTHETIC_DEFAULTS = {"train_size": 512, "val_size": 128, "img_size": 16}
NATIVE_IMG_SIZE = {"fashion-mnist": 28, "digits": 8, "synthetic": SYNTHETIC_DEFAULTS["img_size"]}
FOLDER_IMG_SIZE = 224  # folder:PATH default (ImageNet-style trees)


def native_img_size(name: str) -> int:
    """The resolution a dataset is served at when ``img_size`` is not given."""
    return NATIVE_IMG_SIZE.get(name, FOLDER_IMG_SIZE)
DIGITS_TEST_FRACTION = 0.2  # sklearn's digits has no test split: a fixed, seed-independent one


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSettings(Config):
    """Which data, how much of it, at what resolution, on which device.

    ``train_size``/``val_size``/``test_size`` of None mean: all that is left / 10% of the
    training pool (at most 5000) / the whole test split (``synthetic``: 512 / 128 / val_size).
    ``in_chans`` and ``num_classes`` apply only to ``synthetic`` (default 3 and 10; other
    datasets fix them); ``num_workers`` only to ``folder:PATH``.

    ``calibration_size``: held-out images of the training pool, disjoint from train and val,
    on which adaptive families fit what they fit on held-out outputs (e.g. exit
    thresholds); never trained on, never used for search decisions. None: the images train
    and val leave over, at most 10% of the pool and 1000 (none when ``train_size`` is None,
    so that default splits are unchanged); a number: exactly that many (then a
    ``train_size`` of None leaves them out of train).
    """

    name: str
    img_size: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    calibration_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    data_dir: str | None = None
    load_test: bool = False
    num_workers: int = 0
    in_chans: int | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        known = self.name in NAMES[:3] or (self.name.startswith("folder:") and self.name[7:])
        check(bool(known), f"`name` must be one of {list(NAMES)}, got name={self.name!r}",
              field="name")
        for field in ("img_size", "train_size", "val_size", "test_size", "in_chans"):
            value = getattr(self, field)
            check(value is None or value >= 1, f"`{field}` must be >= 1, got {field}={value}",
                  field=field)
        for field, low in (("seed", 0), ("num_workers", 0), ("num_classes", 2),
                           ("calibration_size", 0)):
            value = getattr(self, field)
            check(value is None or value >= low, f"`{field}` must be >= {low}, got {value}",
                  field=field)
        for field in ("in_chans", "num_classes"):
            check(
                getattr(self, field) is None or self.name == "synthetic",
                f"`{field}` is only configurable for name='synthetic', got name={self.name!r}",
                field=field,
            )


class Split(Protocol):
    """One split of a dataset: its size and its batches (normalised, on the device)."""

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None, drop_last: bool
    ) -> Iterator[Batch]: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class Data:
    """A loaded dataset: splits plus what export and provenance need (mean/std, class names)."""

    settings: DataSettings
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split | None = None
    calibration: Split | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape (C, H, W), as the models and the MACs counter take it."""
        return (self.in_chans, self.img_size, self.img_size)

    def train_steps(self, batch_size: int) -> int:
        """Optimizer steps per epoch: an incomplete last batch is dropped unless it is alone."""
        return max(len(self.train) // batch_size, 1)

    def train_batches(self, batch_size: int, *, epoch: int, seed: int) -> Iterator[Batch]:
        """Shuffled batches; the order depends only on (seed, epoch)."""
        shuffle_seed = mix_seeds(seed, epoch)
        return self.train.batches(batch_size, shuffle_seed=shuffle_seed, drop_last=True)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        return self.val.batches(batch_size, shuffle_seed=None, drop_last=False)

    def calibration_batches(self, batch_size: int) -> Iterator[Batch]:
        """The calibration split's batches (ValueError naming the setting if it is empty)."""
        if self.calibration is None:
            raise ValueError("data.calibration_size: this data has no calibration images "
                             "(train and val take the whole training pool); set "
                             "data.calibration_size, or a data.train_size that leaves some")
        return self.calibration.batches(batch_size, shuffle_seed=None, drop_last=False)

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        if self.test is None:
            name = self.settings.name
            raise RuntimeError(f"the test split of {name!r} was not loaded: pass load_test=True")
        return self.test.batches(batch_size, shuffle_seed=None, drop_last=False)

    def describe(self) -> dict[str, Any]:
        """Provenance: what was loaded, how much, and how it was normalised (JSON-friendly)."""
        return {
            "name": self.settings.name,
            "seed": self.settings.seed,
            "train_size": len(self.train),
            "val_size": len(self.val),
            "calibration_size": 0 if self.calibration is None else len(self.calibration),
            "test_size": None if self.test is None else len(self.test),
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }


# --- splitting and batching ------------------------------------------------------------------


def mix_seeds(*values: int) -> int:
    """One 32-bit seed from several integers, free of the collisions of ``seed * K + epoch``."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of indices whose every prefix holds each class in proportion.

    Each index is ranked by its position within its class (in a seeded shuffle) divided by the
    class size; sorting by that rank interleaves the classes evenly.
    """
    perm = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[perm]
    rank = np.empty(len(labels))
    for c in np.unique(shuffled):
        mask = shuffled == c
        rank[mask] = (np.arange(mask.sum()) + 0.5) / mask.sum()
    return perm[np.argsort(rank, kind="stable")]


def split_indices(
    labels: np.ndarray, *, train_size: int | None, val_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted (train, val) indices into the training pool, stratified and seeded."""
    train, val, _ = carve(labels, train_size=train_size, val_size=val_size,
                          calibration_size=0, seed=seed)
    return train, val


def carve(
    labels: np.ndarray, *, train_size: int | None, val_size: int | None,
    calibration_size: int | None, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint, sorted (train, val, calibration) indices into the training pool, stratified
    and seeded: val the first ``val_size`` of a stratified order, train the next, calibration
    the last (so neither of the others depends on it); sizes as :class:`DataSettings` says."""
    pool = len(labels)
    n_val = val_size if val_size is not None else min(max(pool // 10, 1), MAX_DEFAULT_VAL)
    check(n_val < pool, f"`val_size` must be < the training pool ({pool}), got val_size={n_val}")
    n_cal = calibration_size or 0
    n_train = train_size if train_size is not None else pool - n_val - n_cal
    check(
        n_train <= pool - n_val,
        f"`train_size` must be <= training pool - val_size = {pool - n_val}, got {n_train}",
    )
    left = pool - n_val - n_train
    if calibration_size is None:
        n_cal = min(left, max(pool // 10, 1), MAX_DEFAULT_CALIBRATION)
    check(
        n_train >= 1 and n_cal <= left,
        f"`calibration_size` must be <= training pool - val_size - train_size = {left}, "
        f"got calibration_size={n_cal}", field="calibration_size",
    )
    order = stratified_order(labels, seed)
    return (np.sort(order[n_val : n_val + n_train]), np.sort(order[:n_val]),
            np.sort(order[pool - n_cal :]) if n_cal else np.zeros(0, dtype=np.int64))


def subset_indices(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded subset of ``size`` (all when None or larger)."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    return np.sort(stratified_order(labels, seed)[:size])


def index_batches(
    n: int, batch_size: int, *, shuffle_seed: int | None, drop_last: bool
) -> Iterator[torch.Tensor]:
    """CPU index tensors of batches over ``range(n)``; drop_last never drops the only batch."""
    check(batch_size >= 1, f"`batch_size` must be >= 1, got batch_size={batch_size}")
    if shuffle_seed is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


# --- tensor datasets -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pool:
    """Images at native resolution (N, C, H, W), any dtype; ``scale`` maps them to [0, 1]."""

    images: torch.Tensor
    labels: torch.Tensor
    scale: float = 1.0

    def take(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(rows)
        return self.images[index].to(device), self.labels[index].to(device)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSplit:
    """A split held as device tensors; ``indices`` are the rows of the pool it holds."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray
    prepare: Callable[[torch.Tensor], torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None, drop_last: bool
    ) -> Iterator[Batch]:
        n = len(self)
        for idx in index_batches(n, batch_size, shuffle_seed=shuffle_seed, drop_last=drop_last):
            idx = idx.to(self.labels.device)
            yield self.prepare(self.images[idx]), self.labels[idx]


def tensor_data(settings: DataSettings, train: Pool, test: Pool, names: tuple[str, ...]) -> Data:
    """Split the training pool, take mean/std from the train split, keep splits on the device."""
    train_idx, val_idx, cal_idx = carve(
        train.labels.numpy(),
        train_size=settings.train_size,
        val_size=settings.val_size,
        calibration_size=settings.calibration_size,
        seed=settings.seed,
    )
    device = torch.device(settings.device)
    pixels = train.take(train_idx, device)[0].float() * train.scale
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)
    img_size = settings.img_size or train.images.shape[-1]
    prepare = functools.partial(
        _prepare, scale=train.scale, size=img_size, mean=mean.view(1, -1, 1, 1),
        std=std.view(1, -1, 1, 1),
    )  # fmt: skip

    def split(pool: Pool, rows: np.ndarray) -> TensorSplit:
        images, labels = pool.take(rows, device)
        return TensorSplit(images=images, labels=labels, indices=rows, prepare=prepare)

    test_split = None
    if settings.load_test:
        test_split = split(test, subset_indices(test.labels.numpy(), settings.test_size, 0))
    return Data(
        settings=settings, num_classes=len(names), in_chans=train.images.shape[1],
        img_size=img_size, mean=tuple(mean.tolist()), std=tuple(std.tolist()), class_names=names,
        train=split(train, train_idx), val=split(train, val_idx), test=test_split,
        calibration=split(train, cal_idx) if len(cal_idx) else None,
    )  # fmt: skip


def _prepare(
    x: torch.Tensor, *, scale: float, size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    x = x.float() * scale
    if x.shape[-2:] != (size, size):
        shrink = size < max(x.shape[-2:])
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return (x - mean) / std
