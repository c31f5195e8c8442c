"""The halting policy's config fields, their search dimensions and its budget knob.

:class:`HaltingFields` are the ``halt_*`` fields a ``vit`` config carries, :class:`HaltingParams`
what they give the model (search_spaces/policies/halting/model.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ...adaptive import BudgetKnob
from ...config import check
from ...dims import Choice, Dim, Fixed, TrialLike

NAME = "halting"  # the token_policy value
KNOB = "halt_eps"


@dataclasses.dataclass(frozen=True)
class HaltingParams:
    """The halting score's scale and offset, and the halting threshold 1 - eps."""

    gamma: float = 10.0
    beta: float = -30.0
    eps: float = 0.01



@dataclasses.dataclass(frozen=True, kw_only=True)
class HaltingFields:
    """The ``halt_*`` fields of a config (one with a ``token_policy`` field); they matter only
    when it halts. Score scale
    ``halt_gamma`` and offset ``halt_beta``; the loss targets ``halt_target`` (target halting
    depth as a fraction of depth; the paper's 8 of 12), ``halt_ponder`` (ponder weight
    alpha_p; None = the paper's 5e-4 at depth 12 scaled by 12 / depth, the same pressure per
    block) and ``halt_prior`` (weight alpha_d of the KL to the Gaussian depth prior); and the
    inference-time knob ``halt_eps`` (a token halts once its cumulative score exceeds
    1 - eps; raising it trades accuracy for compute without retraining)."""

    halt_gamma: float = 10.0
    halt_beta: float = -30.0
    halt_target: float = 8 / 12
    halt_ponder: float | None = None
    halt_prior: float = 1e-3
    halt_eps: float = 0.01

    def _check_halting(self) -> None:
        for name in ("halt_gamma", "halt_beta", "halt_target", "halt_prior", "halt_eps",
                     "halt_ponder"):
            value = getattr(self, name)
            check(value is None and name == "halt_ponder" or isinstance(value, (int, float))
                  and not isinstance(value, bool), f"`{name}`={value!r} must be a number")
        check(self.halt_gamma > 0, f"`halt_gamma`={self.halt_gamma} must be > 0")
        check(0 < self.halt_target <= 1,
              f"`halt_target`={self.halt_target} must be in (0, 1] (a fraction of depth)")
        check(self.halt_ponder is None or self.halt_ponder >= 0,
              f"`halt_ponder`={self.halt_ponder} must be None or >= 0")
        check(self.halt_prior >= 0, f"`halt_prior`={self.halt_prior} must be >= 0")
        check(0 < self.halt_eps < 1, f"`halt_eps`={self.halt_eps} must be in (0, 1)")

    def halting_params(self) -> HaltingParams | None:
        """The model's halting settings, or None unless the config's ``token_policy`` is
        this policy's (a static model)."""
        if self.token_policy != NAME:
            return None
        return HaltingParams(gamma=self.halt_gamma, beta=self.halt_beta, eps=self.halt_eps)


# halt_beta goes above the paper's -30 (tuned to fine-tune DeiT) for short runs from scratch;
# halt_eps, the inference-time threshold, stays trained: budget points move it afterwards.
DIMS: dict[str, Dim] = {
    "halt_gamma": Choice((5.0, 10.0)),
    "halt_beta": Choice((-30.0, -15.0, -5.0)),
    "halt_target": Choice((0.33, 0.5, 0.67, 0.83)),
    "halt_ponder": Choice((None, 2e-3, 1e-2)),
    "halt_prior": Choice((0.0, 1e-3, 1e-2)),
    KNOB: Fixed(0.01),
}
BUDGET_KNOBS = {KNOB: BudgetKnob(low=0.0, high=1.0, limit=0.95, description=(
    "halting threshold eps: a token halts once its cumulative score exceeds 1 - eps"))}


def suggest(trial: TrialLike, dims: Mapping[str, Dim]) -> dict[str, Any]:
    """The ``halt_*`` fields of a halting candidate."""
    return {name: dims[name].suggest(trial, name) for name in DIMS}

