"""Warm start: a candidate begins from trained weights, as the adaptive papers' models do.

The weights are an export folder (``nas export``: config.json + model.safetensors, so a
completed static trial can be the parent of its adaptive variants) or a bare safetensors
state dict (timm's layout for ``vit``: DeiT weights load unchanged). The architecture of the
weights fixes the space's architecture dimensions (``SearchSpace.architecture_of`` of the
export's config, or ``architecture_of_weights`` of the tensor shapes).

Loading is strict but for two kinds of tensor, which start fresh: the parameters the
candidate's adaptive part adds to its base (``Adaptive.added_parameters``: gates, reuse
modules) and those matching the caller's ``fresh`` patterns (e.g. ``head.*`` for a new set of
classes); an added parameter the adaptive part derives from the weights takes that value
instead (``Adaptive.inherited``, e.g. a multi-stage model's earlier stage as a copy of the
parent). Any other missing, unexpected or mis-shaped tensor is an :class:`InitError` naming
the first offending tensor, raised before any weight is copied.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import search_spaces
from search_spaces.adaptive import Adaptive

CONFIG, WEIGHTS = "config.json", "model.safetensors"  # an export folder's files


class InitError(ValueError):
    """The initial weights cannot be read, or do not fit the candidate."""


@dataclasses.dataclass(frozen=True)  # not slots: cached_property needs the instance dict
class InitWeights:
    """Initial weights: the safetensors ``file``, its tensor ``shapes`` and, for an export
    folder, the export's ``config.json`` content (None for a state dict). ``sha256`` is
    read from the file when first asked for (checking shapes needs no hash)."""

    path: Path
    file: Path
    shapes: Mapping[str, tuple[int, ...]]
    export: Mapping[str, Any] | None = None

    @functools.cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.file.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def provenance(self) -> dict[str, str]:
        return {"init_weights": str(self.path), "init_sha256": self.sha256}

    def architecture(self, space: search_spaces.SearchSpace) -> dict[str, Any]:
        """The architecture dimensions these weights fix in ``space``."""
        if self.export is not None:
            if self.export.get("space") != space.name:
                raise InitError(f"an export of space {self.export.get('space')!r}, not "
                                f"{space.name!r}")
            config = space.config_from_dict(self.export["config"])
            return {**space.architecture_of(config),
                    "img_size": self.export["input"]["img_size"]}
        try:
            return space.architecture_of_weights(self.shapes)
        except ValueError as err:
            raise InitError(str(err)) from None


def read_init(path: str | Path) -> InitWeights:
    """Read the tensor shapes (not the values) of an export folder or a ``.safetensors``
    file."""
    path = Path(path).expanduser()
    export = None
    if path.is_dir():
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise InitError(f"folder {str(path)!r} is not an export folder (no {CONFIG} and "
                            f"{WEIGHTS})")
        export = json.loads((path / CONFIG).read_text())
        file = path / WEIGHTS
    elif path.is_file() and path.suffix == ".safetensors":
        file = path
    else:
        raise InitError(f"{str(path)!r}: no export folder or .safetensors file there")
    try:
        with safe_open(str(file), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for a bad file
        raise InitError(f"{str(file)!r} is not a readable safetensors file: {err}") from None
    return InitWeights(path=path.resolve(), file=file.resolve(), shapes=shapes, export=export)


def plan(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], *,
         adaptive: Adaptive | None = None, fresh: Sequence[str] = ()) -> list[str]:
    """The names of ``model``'s tensors that start fresh (not in the weights); InitError
    naming the first tensor that is missing (and may not start fresh), unexpected or of
    another shape."""

    def may_be_fresh(name: str) -> bool:
        return (adaptive is not None and adaptive.is_added(name)) or any(
            fnmatch.fnmatchcase(name, p) for p in fresh)

    state = model.state_dict()
    starts_fresh = []
    for name, tensor in state.items():
        if name not in shapes:
            if not may_be_fresh(name):
                raise InitError(f"tensor {name!r} {tuple(tensor.shape)} of the candidate is "
                                "not in the initial weights")
            starts_fresh.append(name)
        elif tuple(shapes[name]) != tuple(tensor.shape) and not may_be_fresh(name):
            raise InitError(f"tensor {name!r} has shape {tuple(shapes[name])} in the initial "
                            f"weights and {tuple(tensor.shape)} in the candidate (start it "
                            "fresh with init.fresh if that is meant)")
        elif tuple(shapes[name]) != tuple(tensor.shape):
            starts_fresh.append(name)
    extra = [n for n in shapes if n not in state and not may_be_fresh(n)]
    if extra:
        raise InitError(f"tensor {extra[0]!r} of the initial weights has no place in the "
                        f"candidate ({len(extra)} such tensors)")
    return starts_fresh


def warm_start(model: nn.Module, init: InitWeights, *, adaptive: Adaptive | None = None,
               fresh: Sequence[str] = ()) -> list[str]:
    """Copy the initial weights into ``model`` (checked first by :func:`plan`), and the
    values the adaptive part derives from them into its added parameters; returns the names
    of the tensors that start fresh (as the model was built)."""
    plan(model, init.shapes, adaptive=adaptive, fresh=fresh)  # before the file is read
    return warm_start_from(model, load_file(str(init.file)), adaptive=adaptive, fresh=fresh)


def warm_start_from(model: nn.Module, weights: Mapping[str, torch.Tensor], *,
                    adaptive: Adaptive | None = None, fresh: Sequence[str] = ()) -> list[str]:
    """:func:`warm_start` from a state dict in memory (e.g. a parent sliced to the
    candidate's base: trainers/inherit.py)."""
    starts_fresh = plan(model, {k: tuple(v.shape) for k, v in weights.items()},
                        adaptive=adaptive, fresh=fresh)
    state = model.state_dict()
    chosen = {n for n in starts_fresh  # the caller's fresh tensors stay fresh
              if not any(fnmatch.fnmatchcase(n, p) for p in fresh)}
    derived = {n: t for n, t in (adaptive.inherited(weights) if adaptive else {}).items()
               if n in chosen and tuple(t.shape) == tuple(state[n].shape)}
    with torch.no_grad():
        for name, tensor in state.items():
            if name not in starts_fresh:
                tensor.copy_(weights[name])
            elif name in derived:
                tensor.copy_(derived[name])
    return [n for n in starts_fresh if n not in derived]
