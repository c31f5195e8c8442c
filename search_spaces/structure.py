"""The structure contract: what a family's models are made of, asked, never guessed.

Generic code (trainers/ scoring and slicing, nas/ guidance) never names a family or a model
class. It asks the space for the :class:`Structure` of a config
(``SearchSpace.structure(config)``), or the structure of a built model
(``search_spaces.registry.layout_of(model)``), and uses only this interface:

- ``groups(model)``: the prunable units of a built model, by name, each the slices of
  state-dict tensors it owns (:class:`Groups` of :class:`Part`); Taylor importance scores
  them, pruning slices them away, so both agree on what a channel is. A name's last word says
  its component (:func:`component`); a family without groups has nothing scored or pruned.
- ``unprunable()``: the components of ``components`` a config's models must keep whole, each
  with the reason (a layer's wiring, or an adaptive part that depends on their count);
  ``prunable()`` is the rest.
- ``pruned(ratios)``: the config a kept share per component gives, and ``kept(new, name,
  group, state)`` how many groups of ``name`` that config keeps; ``rescale(state, model,
  new, rename)`` adjusts what slicing changes the meaning of (attention's 1/sqrt(width)).
- ``answers(output)``: the logits a trained model can answer with (every exit of a
  multi-exit model): importance sums their cross-entropies.
- ``guidance``: the dimensions whose value sets a component's size (:class:`Knob`), read by
  the importance-guided proposals.
- ``explicit()``: the config with derived widths spelled out (a probe of one dimension
  then keeps the others' sizes).
- ``build_key()``: one string for configs that build the same modules (a MACs cache key).

The defaults describe a family that declares no structure: no groups, nothing prunable, its
output's own logits.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .config import Config
from .output import logits_of

COMPONENTS = ("heads", "qk", "v", "ffn", "depth", "width")  # width: the residual stream's
COMPONENT_OF = {"heads": "heads", "qk": "qk", "v": "v", "hidden": "ffn", "depth": "depth",
                "width": "width"}


@dataclasses.dataclass(frozen=True)
class Part:
    """Slices of state-dict tensor ``key`` along ``axis``: slice j belongs to group ``ids[j]``
    (-1: to none of this name's groups)."""

    key: str
    axis: int
    ids: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Groups:
    """``size`` groups made of ``parts``; ``heads`` > 1 when the groups are head-major (group
    ``h * (size // heads) + c``), 1 otherwise. Parts may name buffers (BN statistics): they
    are sliced by pruning and ignored by scoring (they have no gradient)."""

    size: int
    parts: tuple[Part, ...]
    heads: int = 1


@dataclasses.dataclass(frozen=True)
class Knob:
    """The dimension ``dim`` sets the size of ``component`` (:data:`COMPONENTS`). ``stage``:
    the importance summary's stage it is read from; None for a knob shared by every stage
    (read from the most demanding stage). ``none_means``: the size a None value stands for.
    ``applies``: whether narrowing the knob frees capacity in a config (None: always)."""

    component: str
    dim: str
    stage: int | None = None
    none_means: Callable[[Any], float] | None = None
    applies: Callable[[Any], bool] | None = None


def component(name: str) -> str:
    """"heads", "qk", "v", "ffn", "depth" or "width" (the residual stream's channels): what a
    group name (its last word) describes."""
    return COMPONENT_OF[name.rsplit(".", 1)[-1]]


def same_form(old: Any, values: tuple) -> Any:
    """``values`` (one per segment or stage) spelled as ``old`` was: a tuple if it was one,
    else the one value for all (a shared width changed alike everywhere stays shared)."""
    return values if isinstance(old, tuple) else values[0]


def kept_count(n: int, ratio: float) -> int:
    """``round(ratio * n)``, at least 1: how many of ``n`` a keep ratio leaves."""
    return max(1, round(ratio * n))


class Structure:
    """The structural side of one config of a family; a family subclasses it.

    ``models``: the model classes whose ``groups`` this structure reads (so a built model
    finds its structure); ``components``: those its groups can describe and pruning can cut.
    """

    models: ClassVar[tuple[type[nn.Module], ...]] = ()
    components: ClassVar[tuple[str, ...]] = ()
    guidance: ClassVar[tuple[Knob, ...]] = ()

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    def groups(cls, model: nn.Module) -> dict[str, Groups]:
        """The prunable units of ``model``, by name, in forward order (default: none)."""
        return {}

    def unprunable(self) -> dict[str, str]:
        """Components of ``components`` this config's models keep whole, with the reason."""
        return {}

    def prunable(self) -> tuple[str, ...]:
        whole = self.unprunable()
        return tuple(c for c in self.components if c not in whole)

    def pruned(self, ratios: Mapping[str, float]) -> Config:
        """The config that keeps ``ratios`` (component -> share, only prunable ones)."""
        if any(r != 1 for r in ratios.values()):
            raise NotImplementedError(f"{type(self).__name__} gives no pruned configs")
        return self.config

    def kept(self, new: Config, name: str, group: Groups,
             state: Mapping[str, torch.Tensor]) -> int:
        """How many groups a model of ``new`` keeps (per head when head-major) of ``group``,
        whose ``name`` is that of its place in ``new``'s model (its block renumbered when
        blocks are dropped: per-segment widths follow the new depth)."""
        return group.size // group.heads

    def rescale(self, state: dict[str, torch.Tensor], model: nn.Module, new: Config,
                rename: Callable[[str], str | None]) -> None:
        """Adjust ``state`` (in place) for what slicing to ``new`` changes the meaning of;
        ``rename`` gives a module's name in the cut model (its block renumbered; None in a
        dropped block)."""

    def answers(self, output: Any) -> list[torch.Tensor]:
        """The logits a trained model can answer with, from its eval-mode ``output``."""
        return [logits_of(output)]

    def explicit(self) -> Config:
        """The same model's config with every width a field derives spelled out (so that
        changing one dimension keeps the others' sizes: how an inherited search probes the
        parent's envelope)."""
        return self.config

    def build_key(self) -> str:
        """One key for configs that build the same modules."""
        return f"{self.config.KIND}:{self.config.to_json()}"


# ------------------------------------------------------- building blocks of a family's groups
def cat(*pieces: torch.Tensor) -> torch.Tensor:
    return torch.cat([p.long() for p in pieces])


def unowned(n: int) -> torch.Tensor:
    """``n`` slices that belong to no group of a name."""
    return torch.full((n,), -1, dtype=torch.long)


def each(h: int, width: int) -> torch.Tensor:
    """Head index of each of h x width head-major channels."""
    return torch.arange(h).repeat_interleave(width)


def rows(keys: list[str], ids: torch.Tensor) -> list[Part]:
    return [Part(key, 0, ids) for key in keys]


def linear(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def depth_groups(model: nn.Module, container: str, depth: int) -> Groups:
    """One group per block ``{container}.{b}``: every tensor of the block, whole."""
    pattern = re.compile(rf"^{re.escape(container)}\.(\d+)\.")
    parts = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        match = pattern.match(key)
        if match and tensor.dim() > 0:
            parts.append(Part(key, 0, torch.full((tensor.shape[0],), int(match.group(1)))))
    return Groups(depth, tuple(parts))


def scale_rows(state: dict[str, torch.Tensor], keys: list[str], rows: int, old: int,
               new: int) -> None:
    """Multiply the first ``rows`` rows of ``keys`` by sqrt(new / old): a query of ``old``
    channels cut to ``new`` keeps its logits q.k / sqrt(width) over the kept channels."""
    if new != old:
        for key in keys:
            state[key][:rows] *= math.sqrt(new / old)
