"""Token MLP (the transformer FFN): Linear -> GELU -> Linear, hidden width = ratio x dim.

Parameter names ``fc1``/``fc2`` follow timm's ``Mlp`` so DeiT weights load without a key map.
"""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """Maps tokens (..., in_dim) -> (..., dim) through ``int(dim * ratio)`` hidden channels.

    ``in_dim`` defaults to ``dim``; it differs when extra features are concatenated to the FFN
    input (DVT's feature reuse), while the hidden width stays ``ratio x dim``.
    """

    def __init__(self, dim: int, ratio: float = 4.0, *, in_dim: int | None = None) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"Mlp: hidden width int({dim} * {ratio}) = {hidden} must be >= 1")
        self.fc1 = nn.Linear(dim if in_dim is None else in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
