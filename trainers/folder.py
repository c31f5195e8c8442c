"""``folder:PATH`` datasets: an ImageFolder tree read with PIL and timm's transforms.

Such data cannot live as tensors on the device: it is batched by a DataLoader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.readers.reader_image_folder import find_images_and_targets
from torch.utils.data import DataLoader, Dataset

from search_spaces.config import check

from .dataset import (
    FOLDER_IMG_SIZE,
    Batch,
    Data,
    DataSettings,
    Samples,
    carve,
    subset_indices,
)


class ImageFiles(Dataset):
    """(path, class index) samples, read with PIL as RGB and passed through ``transform``."""

    def __init__(self, samples: Samples, transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), target


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoaderSplit:
    """A split read from image files through a DataLoader; batches are moved to ``device``."""

    dataset: ImageFiles
    device: torch.device
    num_workers: int = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None, drop_last: bool
    ) -> Iterator[Batch]:
        check(batch_size >= 1, f"`batch_size` must be >= 1, got batch_size={batch_size}")
        gen = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        loader = DataLoader(
            self.dataset, batch_size=batch_size, shuffle=gen is not None, generator=gen,
            drop_last=drop_last and len(self) >= batch_size, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _scan(folder: Path, class_to_idx: dict[str, int] | None) -> tuple[Samples, dict[str, int]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"expected a folder of class folders at {folder}")
    samples, class_to_idx = find_images_and_targets(str(folder), class_to_idx=class_to_idx)
    if not samples:
        raise FileNotFoundError(f"no images (.png, .jpg, ...) in class folders under {folder}")
    return samples, class_to_idx


def _labels(samples: Samples) -> np.ndarray:
    return np.array([target for _, target in samples])


def folder_data(settings: DataSettings) -> Data:
    """``PATH/train/<class>/*``, ``PATH/val/...`` (else val is carved from train), ``PATH/test``.

    Normalised with ImageNet's mean/std (timm's defaults): scanning every image for its own
    statistics would cost a pass over the files.
    """
    root, seed = Path(settings.name.removeprefix("folder:")).expanduser(), settings.seed
    train_all, classes = _scan(root / "train", None)
    sizes = {"train_size": settings.train_size, "val_size": settings.val_size, "seed": seed,
             "calibration_size": settings.calibration_size}
    if (root / "val").is_dir():  # train and calibration from train/, val from val/
        val_all = _scan(root / "val", classes)[0]
        labels = _labels(train_all)
        n_train = None if settings.train_size is None else min(settings.train_size, len(labels))
        train_idx, _, cal_idx = carve(labels, **{**sizes, "val_size": 0, "train_size": n_train})
        val_idx = subset_indices(_labels(val_all), settings.val_size, seed)
    else:
        val_all = train_all
        train_idx, val_idx, cal_idx = carve(_labels(train_all), **sizes)
    img_size = settings.img_size or FOLDER_IMG_SIZE
    norm = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}
    eval_tf = create_transform(img_size, is_training=False, **norm)

    def split(samples: Samples, idx: np.ndarray, transform: Callable) -> LoaderSplit:
        files = ImageFiles([samples[i] for i in idx], transform)
        return LoaderSplit(dataset=files, device=torch.device(settings.device),
                           num_workers=settings.num_workers)  # fmt: skip

    test = None
    if settings.load_test:
        check((root / "test").is_dir(), f"`load_test` is True but {root / 'test'} does not exist")
        test_all = _scan(root / "test", classes)[0]
        test = split(test_all, subset_indices(_labels(test_all), settings.test_size, 0), eval_tf)
    train_tf = create_transform(img_size, is_training=True, **norm)
    return Data(
        settings=settings, num_classes=len(classes), in_chans=3, img_size=img_size,
        mean=tuple(norm["mean"]), std=tuple(norm["std"]),
        class_names=tuple(sorted(classes, key=classes.__getitem__)),
        train=split(train_all, train_idx, train_tf), val=split(val_all, val_idx, eval_tf),
        test=test,
        calibration=split(train_all, cal_idx, eval_tf) if len(cal_idx) else None,
    )  # fmt: skip
