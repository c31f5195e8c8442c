"""MACs of an isotropic ViT as a function of the tokens each block runs.

A counter (fvcore, injected by the caller) counts the model run in full once, and each block
at 1 and 2 tokens, which fixes the block's cost as ``a * n + b * n**2`` for n tokens (linear
layers per token, attention per token pair; the tests check the fit at other token counts).
An image's cost is then ``fixed + sum over blocks of a * n_l + b * n_l**2`` with n_l the
tokens it ran through block l; with every token everywhere this is exactly the counter's
count of the full model. The count is per image and independent of the batch: padding that a
batched path runs beside shorter images is not counted (it shows in measured latency).

The model must have ``forward_full`` (every token through every block), ``cls_token``,
``pos_embed`` and ``blocks``: search_spaces/vit/model.py's ``VisionTransformer``.

It lives beside the policies rather than in one of them: halting's cost is this model of the
tokens each block ran, and gating's (search_spaces/policies/gating/cost.py) builds on it for
its fixed part and block 0, so neither policy depends on the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ..adaptive import Count


class _FullRun(nn.Module):
    """A ViT run statically (every token through every block), for counting its full cost."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_full(x)


@dataclasses.dataclass(frozen=True)
class TokenCost:
    """MACs of an isotropic ViT as a function of the tokens each block runs."""

    fixed: float  # patch embedding, final norm and head
    linear: tuple[float, ...]  # a_l per block
    quadratic: tuple[float, ...]  # b_l per block
    tokens: int  # tokens of the full model (class token included)

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int], count: Count) -> TokenCost:
        """Count: the model in full, and each block at 1 and 2 tokens."""
        was_training = model.training
        try:  # the wrapper's mode is restored onto the model: keep the model's own
            full = count(_FullRun(model).train(was_training), input_shape)
        finally:
            model.train(was_training)
        dim = model.cls_token.shape[-1]
        tokens = model.pos_embed.shape[1]
        linear, quadratic = [], []
        for block in model.blocks:
            one, two = count(block, (1, dim)), count(block, (2, dim))
            b = (two - 2 * one) / 2
            linear.append(one - b)
            quadratic.append(b)
        blocks = sum(a * tokens + b * tokens**2 for a, b in zip(linear, quadratic, strict=True))
        return cls(fixed=full - blocks, linear=tuple(linear), quadratic=tuple(quadratic),
                   tokens=tokens)

    def full(self) -> float:
        """MACs per image with every token through every block."""
        n = torch.full((1, len(self.linear)), self.tokens)
        return float(self.tokens_cost(n)[0])

    def tokens_cost(self, tokens_per_block: torch.Tensor) -> torch.Tensor:
        """MACs per image (B,) from the tokens each image ran through each block (B, L)."""
        n = tokens_per_block.double()
        a = torch.tensor(self.linear, dtype=torch.float64, device=n.device)
        b = torch.tensor(self.quadratic, dtype=torch.float64, device=n.device)
        return self.fixed + (n * a + n * n * b).sum(dim=1)

    def kept(self, tokens_per_block: torch.Tensor) -> torch.Tensor:
        """Share of the full model's token-blocks each image ran (B,)."""
        return tokens_per_block.double().sum(1) / (self.tokens * len(self.linear))
