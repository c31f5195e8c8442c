"""Datasets by name: ``fashion-mnist``, ``digits``, ``folder:PATH`` and ``synthetic``.

Train and validation are carved from the TRAINING set (seeded, stratified), so a search never
sees the test split; the test split is loaded only on request (``load_test=True``) for final
reporting. Small datasets live as tensors on the training device at their native resolution and
dtype; resizing (bilinear) and normalisation happen per batch on the device, so models receive
normalised inputs and memory does not grow with ``img_size``. ``folder:PATH`` trees are read
with PIL through timm's transforms and a torch DataLoader.

What a dataset is and how it is split lives in trainers/dataset.py, where the tensor sources
(trainers/sources.py) and image folders (trainers/folder.py) come from in their own modules;
this one only picks the source (no module imports it back).
"""

from __future__ import annotations

from typing import Any

from . import sources
from .dataset import (
    NAMES,
    SYNTHETIC_DEFAULTS,
    Batch,
    Data,
    DataSettings,
    Split,
    mix_seeds,
    native_img_size,
    split_indices,
    tensor_data,
)

__all__ = ["NAMES", "Batch", "Data", "DataSettings", "Split", "load_data", "mix_seeds",
           "native_img_size", "split_indices"]


def load_data(spec: DataSettings | str, **options: Any) -> Data:
    """Load a dataset: ``load_data("digits", img_size=16)`` or ``load_data(DataSettings(...))``."""
    if isinstance(spec, DataSettings):
        if options:
            raise TypeError(f"pass options inside the DataSettings, not as {sorted(options)}")
        settings = spec
    else:
        settings = DataSettings(name=spec, **options)
    if settings.name.startswith("folder:"):
        from .folder import folder_data  # PIL, timm transforms and a DataLoader: only here
        return folder_data(settings)
    if settings.name == "synthetic":  # its pool is generated: its sizes must be known first
        d = SYNTHETIC_DEFAULTS
        sizes = {k: getattr(settings, k) or d[k] for k in ("train_size", "val_size")}
        settings = settings.replace(**sizes)
    pools = {"fashion-mnist": sources.fashion_mnist, "digits": sources.digits,
             "synthetic": sources.synthetic}
    train_pool, test_pool, class_names = pools[settings.name](settings)
    return tensor_data(settings, train_pool, test_pool, class_names)
