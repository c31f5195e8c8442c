"""HOW one candidate is trained, scored and measured: data, the training loop, measurement.

Imports neither ray nor optuna (it runs on GPU machines without them) and never ``nas``.
"""

from __future__ import annotations

from search_spaces import _compat  # noqa: F401  (before timm: see _compat's docstring)

from .data import Data, DataSettings, load_data
from .loop import FitResult, FitSettings, NonFiniteLoss, evaluate, fit, train_one_epoch
from .measure import Latency, count_macs, count_params, describe_device, measure_latency

__all__ = [
    "Data",
    "DataSettings",
    "FitResult",
    "FitSettings",
    "Latency",
    "NonFiniteLoss",
    "count_macs",
    "count_params",
    "describe_device",
    "evaluate",
    "fit",
    "load_data",
    "measure_latency",
    "train_one_epoch",
]
