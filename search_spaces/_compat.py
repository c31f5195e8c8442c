"""Make ``import timm`` work with a CPU-only torch and PyPI's (CUDA-only) torchvision.

timm imports torchvision. PyPI's torchvision wheels carry compiled ops built against CUDA
torch; with a CPU torch their library fails to load, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py`` with "operator torchvision::nms does not exist",
because it registers fake (meta) kernels for ``torchvision::nms`` and ``torchvision::qnms``
whose schemas were never defined.

This module tries to load torchvision's own compiled ops first. Only when that fails does it
define the two missing schemas (no kernels: calling them still fails loudly), which is enough
for torchvision, and so timm, to import. Where torchvision's ops load (a CUDA machine with a
matching torchvision) it changes nothing. Every package of this project imports it before
timm, so Ray workers, which import our packages, get it too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: dropping it removes the schemas


def _torchvision_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to repair
    libs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    if not libs:
        return False
    try:
        torch.ops.load_library(str(libs[0]))
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Define ``torchvision::nms``/``qnms`` schemas when torchvision's own ops cannot load."""
    global _library
    if _library is not None or _torchvision_ops_load():
        return
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _library.define(schema)


ensure_torchvision_importable()
