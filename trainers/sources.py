"""Where the tensor datasets come from: Fashion-MNIST's IDX files, scikit-learn's bundled
8x8 digits, and a learnable synthetic set. Each returns (train pool, test pool, class names).
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import (
    DIGITS_TEST_FRACTION,
    SYNTHETIC_DEFAULTS,
    DataSettings,
    Pool,
    mix_seeds,
    stratified_order,
)

FASHION_MNIST_ENV = "VITNAS_FASHION_MNIST"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# --- Fashion-MNIST (IDX files) ---------------------------------------------------------------

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FASHION_FILES = {
    part: (f"{part}-images-idx3-ubyte", f"{part}-labels-idx1-ubyte") for part in ("train", "t10k")
}


@functools.lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (gzipped or raw): 2 zero bytes, dtype code, ndim, big-endian dims."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype, count = np.dtype(_IDX_DTYPES[code]), math.prod(dims)
    if len(raw) - 4 - 4 * ndim != count * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} of {dtype}; the data size does not match")
    data = np.frombuffer(raw, dtype, count=count, offset=4 + 4 * ndim).reshape(dims)
    data.setflags(write=False)  # cached: shared by every caller
    return data


def find_fashion_mnist(data_dir: str | None = None) -> Path:
    """The first folder holding the four IDX files: data_dir, $VITNAS_FASHION_MNIST, Debian's."""
    candidates = [d for d in (data_dir, os.environ.get(FASHION_MNIST_ENV)) if d]
    candidates.append(FASHION_MNIST_DEBIAN_DIR)
    for folder in map(Path, candidates):
        if all(_idx_file(folder, stem) for stems in _FASHION_FILES.values() for stem in stems):
            return folder
    raise FileNotFoundError(
        "Fashion-MNIST not found: looked for train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz] "
        f"in {candidates}. Install it with `apt-get install dataset-fashion-mnist`, or pass "
        f"data_dir=... or set {FASHION_MNIST_ENV} to a folder holding those files."
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist(settings: DataSettings) -> tuple[Pool, Pool, tuple[str, ...]]:
    folder = find_fashion_mnist(settings.data_dir)

    def pool(split: str) -> Pool:
        images, labels = (read_idx(str(_idx_file(folder, s))) for s in _FASHION_FILES[split])
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
        return Pool(x, torch.from_numpy(labels.astype(np.int64)), scale=1 / 255)

    empty = Pool(torch.empty(0, 1, 28, 28), torch.empty(0, dtype=torch.int64))
    return pool("train"), pool("t10k") if settings.load_test else empty, FASHION_MNIST_CLASSES


# --- scikit-learn digits and synthetic -------------------------------------------------------


def digits(settings: DataSettings) -> tuple[Pool, Pool, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    labels = bunch.target.astype(np.int64)
    order = stratified_order(labels, seed=0)
    n_test = round(len(labels) * DIGITS_TEST_FRACTION)

    def pool(rows: np.ndarray) -> Pool:
        rows = np.sort(rows)
        return Pool(images[torch.from_numpy(rows)], torch.from_numpy(labels[rows]), 1 / 16)

    return pool(order[n_test:]), pool(order[:n_test]), tuple(str(i) for i in range(10))


def synthetic_pool(
    n: int, *, num_classes: int, in_chans: int, img_size: int, seed: int, stream: int
) -> Pool:
    """``n`` images in [0, 1]: a smooth per-class pattern, shifted (circularly, up to 1/8 of
    the side) and noised; learnable, yet a tiny MLP stays well below 100% after a few epochs.

    Patterns depend on ``seed`` only, so pools drawn with another ``stream`` (the test set)
    share them while their labels, shifts and noise differ.
    """
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=torch.Generator().manual_seed(seed))
    protos = F.interpolate(coarse, (img_size, img_size), mode="bilinear", align_corners=False)
    protos = 0.5 + 0.5 * (protos - protos.mean(dim=0, keepdim=True))
    gen = torch.Generator().manual_seed(mix_seeds(seed, stream))
    labels = torch.randperm(n, generator=gen) % num_classes
    x = protos[labels] + 0.5 * torch.randn(n, in_chans, img_size, img_size, generator=gen)
    shift = img_size // 8
    offsets = torch.randint(-shift, shift + 1, (2, n, 1), generator=gen)
    for dim, offset in zip((2, 3), offsets, strict=True):
        index = (torch.arange(img_size) - offset) % img_size  # (n, img_size)
        shape = [n, 1, 1, 1]
        shape[dim] = img_size
        x = x.gather(dim, index.view(shape).expand_as(x))
    return Pool(x.clamp(0.0, 1.0), labels)


def synthetic(settings: DataSettings) -> tuple[Pool, Pool, tuple[str, ...]]:
    n_train, n_val = settings.train_size, settings.val_size
    assert n_train is not None and n_val is not None  # filled in by load_data
    num_classes = settings.num_classes or 10
    options = {
        "num_classes": num_classes,
        "in_chans": settings.in_chans or 3,
        "img_size": settings.img_size or SYNTHETIC_DEFAULTS["img_size"],
        "seed": settings.seed,
    }
    train = synthetic_pool(n_train + n_val + (settings.calibration_size or 0), stream=1,
                           **options)
    test = synthetic_pool(settings.test_size or n_val, stream=2, **options)
    return train, test, tuple(f"class{i}" for i in range(num_classes))
