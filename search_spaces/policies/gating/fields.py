"""The gated policy's config fields, their search dimensions and its budget knobs (AdaViT).

:class:`GateFields` are the ``gate_*`` fields a ``vit`` config carries, :class:`GateParams`
what they give the model (search_spaces/policies/gating/gates.py); ``DIMS`` their search
dimensions (the gate kinds, any non-empty subset, and one usage target per kind); the budget
knobs are one threshold per gate kind (a higher threshold turns more off).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

from ...adaptive import BudgetKnob
from ...config import ConfigError, check
from ...dims import Choice, Dim, Fixed, TrialLike

NAME = "gating"  # the token_policy value
KINDS = ("heads", "branches", "patches")


@dataclasses.dataclass(frozen=True)
class GateParams:
    """The gate kinds a model has, the Gumbel temperature and each kind's threshold."""

    kinds: tuple[str, ...] = KINDS
    tau: float = 5.0
    heads: float = 0.5
    branches: float = 0.5
    patches: float = 0.6


# gate kinds -> their config fields: usage target and (budget knob) threshold
TARGETS = {"heads": "gate_head_target", "branches": "gate_branch_target",
           "patches": "gate_patch_target"}
THRESHOLDS = {"heads": "gate_head_threshold", "branches": "gate_branch_threshold",
              "patches": "gate_patch_threshold"}
SUBSETS = tuple("+".join(c) for r in (1, 2, 3) for c in itertools.combinations(KINDS, r))


def kinds_of(value: str) -> tuple[str, ...]:
    """``"heads+patches"`` -> ("heads", "patches")."""
    return tuple(value.split("+"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateFields:
    """The ``gate_*`` fields of a config (one with a ``token_policy`` field); they matter only
    when it is gated.

    ``gate_kinds``: which gates each block from index 1 on has, "+"-joined from heads,
    branches, patches. Usage targets ``gate_head_target``, ``gate_branch_target``,
    ``gate_patch_target`` (the fraction of heads, branches and patch tokens to keep; the
    authors' default 0.5), the usage loss weight ``gate_weight`` (2) and the Gumbel
    temperature ``gate_tau`` (5). The thresholds ``gate_head_threshold`` (0.5),
    ``gate_branch_threshold`` (0.5) and ``gate_patch_threshold`` (0.6) are the
    inference-time knobs: a bit is on when sigmoid(logit / tau) exceeds its threshold.
    """

    gate_kinds: str = "heads+branches+patches"
    gate_head_target: float = 0.5
    gate_branch_target: float = 0.5
    gate_patch_target: float = 0.5
    gate_weight: float = 2.0
    gate_tau: float = 5.0
    gate_head_threshold: float = 0.5
    gate_branch_threshold: float = 0.5
    gate_patch_threshold: float = 0.6

    def _check_gates(self) -> None:
        check(isinstance(self.gate_kinds, str) and self.gate_kinds in SUBSETS,
              f"`gate_kinds`={self.gate_kinds!r} must be a non-empty '+'-joined subset of "
              f"{list(KINDS)} in that order; allowed: {list(SUBSETS)}")
        numbers = (*TARGETS.values(), *THRESHOLDS.values(), "gate_weight", "gate_tau")
        for name in numbers:
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool),
                  f"`{name}`={value!r} must be a number")
        for name in (*TARGETS.values(), *THRESHOLDS.values()):
            check(0 < getattr(self, name) < 1, f"`{name}`={getattr(self, name)} must be in "
                                               "(0, 1)")
        check(self.gate_weight >= 0, f"`gate_weight`={self.gate_weight} must be >= 0")
        check(self.gate_tau > 0, f"`gate_tau`={self.gate_tau} must be > 0")

    def gating_params(self) -> GateParams | None:
        """The model's gate settings, or None unless the config's ``token_policy`` is this
        policy's (an ungated model)."""
        if self.token_policy != NAME:
            return None
        return GateParams(kinds=kinds_of(self.gate_kinds), tau=self.gate_tau,
                          heads=self.gate_head_threshold,
                          branches=self.gate_branch_threshold,
                          patches=self.gate_patch_threshold)


DIMS: dict[str, Dim] = {
    "gate_kinds": Choice(SUBSETS),
    **{name: Choice((0.3, 0.5, 0.7, 0.9)) for name in TARGETS.values()},
    "gate_weight": Fixed(2.0),
    "gate_tau": Fixed(5.0),
    # the thresholds stay trained: budget points move them afterwards
    **{name: Fixed(value) for name, value in (("gate_head_threshold", 0.5),
                                              ("gate_branch_threshold", 0.5),
                                              ("gate_patch_threshold", 0.6))},
}
# Default far ends: trained gates' logits / tau sit close to the cut (sigmoid 0.39-0.57
# for 90% of the heads of a model fine-tuned for 50% usage; patches 0.56-0.64), so a little
# above the trained thresholds already turns most off (results/benchmarks/adaptive.md).
LIMITS = {"heads": 0.6, "branches": 0.6, "patches": 0.66}
BUDGET_KNOBS = {
    THRESHOLDS[kind]: BudgetKnob(low=0.0, high=1.0, limit=LIMITS[kind], description=(
        f"{kind} gate threshold: a {kind[:-1]} is kept when sigmoid(logit / tau) "
        "exceeds it"))
    for kind in KINDS
}


def suggest(trial: TrialLike, dims: Mapping[str, Dim]) -> dict[str, Any]:
    """The ``gate_*`` fields of a gated candidate: the usage targets of the kinds it has."""
    kinds = kinds_of(dims["gate_kinds"].suggest(trial, "gate_kinds"))
    drawn = {"gate_kinds": "+".join(kinds)}
    for name, dim in dims.items():
        if name.startswith("gate_") and name != "gate_kinds":
            kind = next((k for k, f in TARGETS.items() if f == name), None)
            if kind is None or kind in kinds:
                drawn[name] = dim.suggest(trial, name)
    return drawn


def check_config(config: Any) -> None:
    """A gated config needs two blocks: block 0 runs in full, the gates act from block 1 on."""
    check(config.depth >= 2,
          f"`depth`={config.depth} must be >= 2 with token_policy='gating' (block 0 runs in "
          "full, the gates act from block 1 on)")


def check_dims(dims: Mapping[str, Dim]) -> None:
    """A search domain that may draw a gated config must not draw a depth below 2."""
    if min(dims["depth"].values()) < 2:
        raise ConfigError(f"space.dims.depth: {min(dims['depth'].values())} blocks cannot be "
                          "gated (token_policy 'gating' needs depth >= 2): raise depth or "
                          "drop 'gating'")
