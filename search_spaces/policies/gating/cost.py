"""MACs per image of a gated ViT (search_spaces/policies/gating/gates.py), from the bits it
really used.

The injected counter (fvcore) counts, per block, the attention's LayerNorm at 1 token, the
attention at 1 and 2 tokens (``A1 n + A2 n^2`` with every head; each head is an equal share,
as its Q/K/V rows, its attention and its slice of the output projection are), and the FFN
part (sandwich FFNs, second LayerNorm and MLP) at 1 token (linear in n); plus each gate
Linear on what it reads (heads and branches: the class token; patches: every patch token).

A gated block b of an image that ran n tokens (class token included), k heads with the
attention branch on (a = 1) and the FFN branch on or off (f) costs
``[a k > 0] (norm n + a k / H (A1 n + A2 n^2)) + f ffn n``: the same as fvcore's count of
the equivalent smaller static block (k of H heads, n tokens, no attention branch), which the
tests check. Block 0 runs in full; the gates always run. Padding that the batched path runs
beside shorter images is not counted (it shows in measured latency).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...adaptive import Count
from ..token_cost import TokenCost


@dataclasses.dataclass(frozen=True)
class GateCost:
    fixed: float  # patch embedding, block 0, final norm, head and every gate
    norm: tuple[float, ...]  # per gated block: attention LayerNorm per token
    attn_linear: tuple[float, ...]  # A1 per gated block (all heads)
    attn_quadratic: tuple[float, ...]  # A2 per gated block (all heads)
    ffn: tuple[float, ...]  # per gated block: every FFN of it, per token
    tokens: int
    heads: int
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int], count: Count,
           kinds: Sequence[str]) -> GateCost:
        tokens = TokenCost.of(model, input_shape, count)
        t, dim = tokens.tokens, model.cls_token.shape[-1]
        block0 = tokens.linear[0] * t + tokens.quadratic[0] * t * t
        gates = 0.0
        for gate in model.gates:
            for kind, layer in (("heads", gate.heads), ("branches", gate.branches)):
                gates += count(layer, (dim,)) if kind in kinds else 0.0
            gates += count(gate.patches, (t - 1, dim)) if "patches" in kinds else 0.0
        norm, a1, a2, ffn = [], [], [], []
        for block in list(model.blocks)[1:]:
            one, two = count(block.attn, (1, dim)), count(block.attn, (2, dim))
            a2.append((two - 2 * one) / 2)
            a1.append(one - a2[-1])
            norm.append(count(block.norm1, (1, dim)))
            ffn.append(sum(count(f, (1, dim)) for f in block.pre_ffns)
                       + count(block.norm2, (1, dim)) + count(block.mlp, (1, dim)))
        return cls(fixed=tokens.fixed + block0 + gates, norm=tuple(norm),
                   attn_linear=tuple(a1), attn_quadratic=tuple(a2), ffn=tuple(ffn),
                   tokens=t, heads=model.blocks[0].attn.num_heads, kinds=tuple(kinds))

    def block_cost(self, n: torch.Tensor, heads: torch.Tensor,
                   ffn_on: torch.Tensor) -> torch.Tensor:
        """MACs of the gated blocks (..., L-1): ``n`` tokens, ``heads`` heads computed (0
        when the attention branch is off), ``ffn_on`` 0/1."""
        dev = n.device

        def per_block(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64, device=dev)

        n, heads, ffn_on = n.double(), heads.double(), ffn_on.double()
        attn = (heads > 0).double() * per_block(self.norm) * n + heads / self.heads * (
            per_block(self.attn_linear) * n + per_block(self.attn_quadratic) * n * n)
        return attn + ffn_on * per_block(self.ffn) * n

    def counts(self, aux: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per image and gated block: tokens run, heads computed, attention and FFN bits."""
        some = next(iter(aux[f"gate_{k}"] for k in self.kinds))
        shape = some.shape[:2]
        ones = torch.ones(shape, dtype=torch.float64, device=some.device)
        n = (1 + aux["gate_patches"].double().sum(-1) if "patches" in self.kinds
             else ones * self.tokens)
        k = aux["gate_heads"].double().sum(-1) if "heads" in self.kinds else ones * self.heads
        if "branches" in self.kinds:
            attn_on, ffn_on = (aux["gate_branches"][..., i].double() for i in (0, 1))
        else:
            attn_on = ffn_on = ones
        return n, k * attn_on, attn_on, ffn_on

    def full(self) -> float:
        blocks = len(self.ffn)
        n = torch.full((1, blocks), float(self.tokens))
        heads = torch.full((1, blocks), float(self.heads))
        return self.fixed + float(self.block_cost(n, heads, torch.ones(1, blocks)).sum())

    def per_image(self, aux: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n, heads, _, ffn_on = self.counts(aux)
        return self.fixed + self.block_cost(n, heads, ffn_on).sum(dim=1)

    def usage(self, aux: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per image: share of heads kept over the blocks whose attention ran, of branches
        and of patch tokens kept, over the gated blocks (the kinds the model has)."""
        out = {}
        _, heads, attn_on, _ = self.counts(aux)
        if "heads" in self.kinds:
            out["usage_heads"] = heads.sum(1) / (attn_on.sum(1) * self.heads).clamp_min(1)
        if "branches" in self.kinds:
            out["usage_branches"] = aux["gate_branches"].double().mean(dim=(1, 2))
        if "patches" in self.kinds:
            out["usage_patches"] = aux["gate_patches"].double().mean(dim=(1, 2))
        return out
