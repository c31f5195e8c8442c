"""The halting policy's cost model: the token cost of the tokens each block really ran."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from ..token_cost import TokenCost


@dataclasses.dataclass(frozen=True)
class HaltingCost:
    """Cost of a halting run: the token cost of the tokens each block really ran."""

    tokens: TokenCost

    def full(self) -> float:
        return self.tokens.full()

    def per_image(self, aux: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.tokens.tokens_cost(aux["tokens_per_block"])

    def usage(self, aux: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"tokens_kept": self.tokens.kept(aux["tokens_per_block"])}
