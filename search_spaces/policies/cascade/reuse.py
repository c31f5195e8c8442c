"""DVT's reuse from one cascade stage to the next: features and attention relationships.

See search_spaces/policies/cascade/model.py for how a cascade feeds them; resizing a stage's
token grid (and its attention maps) to the next stage's is done here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.mlp import Mlp
from ...vit.model import LN_EPS


def reuse_widths(dim: int) -> tuple[int, int]:
    """Hidden and output widths of the feature-reuse MLP: the paper's 128 and 48 at 384."""
    return max(1, round(dim / 3)), max(1, round(dim / 8))


def resize_grid(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, g, g) maps to (..., C, size, size): nearest upsampling by the smallest
    integer factor reaching ``size``, then adaptive average pooling."""
    g = x.shape[-1]
    if g == size:
        return x
    factor = -(-size // g)
    if factor > 1:
        x = F.interpolate(x, size=(g * factor, g * factor), mode="nearest")
    return F.adaptive_avg_pool2d(x, size)


def relation_matrix(g_from: int, g_to: int) -> torch.Tensor:
    """The linear map (1 + g_to^2, 1 + g_from^2) that :func:`resize_grid` applies to one
    token axis of attention maps, the class token's entry kept apart: one matrix product
    per axis instead of interpolating many small maps (measured 28x faster on CPU)."""
    n1, n2 = g_from * g_from, g_to * g_to
    basis = torch.eye(n1).reshape(n1, 1, g_from, g_from)
    matrix = torch.zeros(1 + n2, 1 + n1)
    matrix[0, 0] = 1.0
    matrix[1:, 1:] = resize_grid(basis, g_to).reshape(n1, n2).T
    return matrix


def resize_relation(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Attention maps (B, C, 1 + g_from^2, 1 + g_from^2) -> (B, C, 1 + g_to^2, 1 + g_to^2)
    by ``matrix`` (:func:`relation_matrix`) on both token axes: each patch axis resized as a
    grid, the class token's row, column and entry apart."""
    matrix = matrix.to(x.dtype)
    return matrix @ x @ matrix.T


class ReuseMlp(nn.Module):
    """An FFN whose input gets reused features: ``fc2(act(fc1(x) + reuse(features)))``,
    i.e. the paper's first Linear on [x, features] with its weight split in two."""

    hidden_inputs = ("reuse",)  # Linears adding to fc1's output: their rows are hidden channels

    def __init__(self, mlp: Mlp, reuse_dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = mlp.fc1, mlp.act, mlp.fc2
        self.reuse = nn.Linear(reuse_dim, self.fc1.out_features, bias=False)
        nn.init.trunc_normal_(self.reuse.weight, std=0.02, a=-0.04, b=0.04)  # as init_weights

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc1(x)
        if features is not None:
            h = h + self.reuse(features)
        return self.fc2(self.act(h))


class FeatureReuse(nn.Module):
    """Stage k-1's final tokens (B, 1 + g_from^2, D) -> reused features (B, 1 + g_to^2, r)."""

    def __init__(self, dim: int, g_from: int, g_to: int) -> None:
        super().__init__()
        hidden, self.width = reuse_widths(dim)
        self.g_from, self.g_to = g_from, g_to
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden,
                                                                                    self.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        f = self.fc2(self.act(self.fc1(self.norm(tokens[:, 1:]))))  # patch tokens only
        f = f.transpose(1, 2).reshape(b, self.width, self.g_from, self.g_from)
        f = resize_grid(f, self.g_to).flatten(2).transpose(1, 2)
        return torch.cat([f.new_zeros(b, 1, self.width), f], dim=1)


class RelationReuse(nn.Module):
    """Stage k-1's logits (B, L, H, N1, N1) -> per-layer biases (B, L, H, N2, N2)."""

    def __init__(self, layers: int, heads: int, g_from: int, g_to: int) -> None:
        super().__init__()
        c = layers * heads
        self.layers, self.heads, self.g_from, self.g_to = layers, heads, g_from, g_to
        self.fc1, self.act, self.fc2 = nn.Linear(c, 3 * c), nn.GELU(), nn.Linear(3 * c, c)
        # built once here, never while a forward is traced (a MACs count sees only its use)
        self.register_buffer("resize", relation_matrix(g_from, g_to), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        b, n = logits.shape[0], logits.shape[-1]
        x = logits.reshape(b, self.layers * self.heads, n, n).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(x))).permute(0, 3, 1, 2)  # a 1x1 MLP over channels
        x = resize_relation(x, self.resize)
        return x.reshape(b, self.layers, self.heads, *x.shape[-2:])
