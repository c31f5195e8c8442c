"""AdaViT usage gates for the isotropic ViT, with real skipping at inference.

"AdaViT: Adaptive Vision Transformers for Efficient Image Recognition", Meng et al., CVPR
2022, https://arxiv.org/abs/2111.15668 (PAPERS.md section 3).

Every block from index 1 on (block 0 always runs in full) has up to three linear gates, all
reading the block's input: ``heads`` Linear(dim, heads) on the class token (a keep bit per
attention head), ``branches`` Linear(dim, 2) on the class token (a bit for the attention
branch and one for the FFN branch: ``x = x + s0 * attn(x)``, ``x = x + s1 * ffn(x)``; with a
sandwich the FFN bit covers every FFN of the block) and ``patches`` Linear(dim, 1) on every
patch token (the class token is always kept). A dropped token passes the block unchanged and
a later block's gate may select it again. Which gate kinds a model has is a config field.

Bits: in training, Gumbel-sigmoid ``sigmoid((logits + g1 - g2) / tau)`` (g1, g2 Gumbel
samples) made hard at the kind's threshold with a straight-through gradient, as the authors
coded it; in evaluation the same rule without the noise, ``sigmoid(logits / tau) >
threshold``. The authors' code drops tau at evaluation (``sigmoid(logits) > threshold``):
at threshold 0.5 both are ``logits > 0``, but at the patch threshold 0.6 theirs cuts at
logit 0.41 while training cut at 2.03, and a model trained for 50% of the patch tokens kept
97% of them on our validation images (results/benchmarks/adaptive.md); with tau kept, the
realised usage follows the target. The thresholds are the budget knobs: raised at
inference, they skip more without retraining.

Two ways to run the same model, giving the same logits in evaluation:

- :func:`forward_masked` (training, and the reference): every head, branch and token is
  computed and multiplied by its bit; a dropped token is no attention key and its branch
  outputs are multiplied by 0 (so it passes the block unchanged).
- :func:`forward_skipping` (evaluation, export): nothing that is off is computed. Per block
  the kept tokens of each image are packed (search_spaces/layers/ragged.py, shared with
  halting) and the block runs on them; the FFN runs only on the images whose FFN bit is
  set, the attention only on those whose attention bit is set, and each head only on the
  images that keep it (per-head gathers: one slice of the Q/K/V and output projections per
  head; results/benchmarks/gates.md measures it against masking and against grouping images
  by their head pattern).

Both return the final tokens and ``aux``: the bits of each gated block, ``gate_heads``
(B, L-1, H), ``gate_branches`` (B, L-1, 2) and ``gate_patches`` (B, L-1, N) (patch tokens
only), each only for the kinds the model has; the losses read them (differentiable in
training) and the cost model (search_spaces/policies/gating/cost.py) counts from them what ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...layers import ragged
from .fields import KINDS, GateParams

GATE_BIAS = 3.0  # gates start mostly on: fine-tuning starts from the parent's computation


class BlockGates(nn.Module):
    """The gates of one block: ``heads``, ``branches`` and ``patches`` Linears (the kinds
    asked for)."""

    def __init__(self, dim: int, num_heads: int, kinds: Sequence[str]) -> None:
        super().__init__()
        widths = {"heads": num_heads, "branches": 2, "patches": 1}
        for kind in KINDS:
            self.register_module(kind, nn.Linear(dim, widths[kind]) if kind in kinds else None)

    def reset(self) -> None:
        """Small weights and bias GATE_BIAS: every bit starts (almost surely) on."""
        for kind in KINDS:
            layer = getattr(self, kind)
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.constant_(layer.bias, GATE_BIAS)

    def logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gate logits from the block input (B, T, D): heads (B, H), branches (B, 2),
        patches (B, T - 1)."""
        out = {}
        if self.heads is not None:
            out["heads"] = self.heads(x[:, 0])
        if self.branches is not None:
            out["branches"] = self.branches(x[:, 0])
        if self.patches is not None:
            out["patches"] = self.patches(x[:, 1:]).squeeze(-1)
        return out


def gate_bits(logits: torch.Tensor, *, threshold: float, tau: float,
              noisy: bool) -> torch.Tensor:
    """Hard 0/1 bits. ``noisy`` (training): Gumbel-sigmoid with a straight-through gradient
    (forward value the hard bit, gradient that of the soft sample); else the same without
    noise, ``sigmoid(logits / tau) > threshold``."""
    if not noisy:
        return (torch.sigmoid(logits / tau) > threshold).to(logits.dtype)
    g1 = -torch.empty_like(logits).exponential_().log()
    g2 = -torch.empty_like(logits).exponential_().log()
    soft = torch.sigmoid((logits + g1 - g2) / tau)
    hard = (soft > threshold).to(logits.dtype)
    return hard - soft.detach() + soft


def decide(gates: BlockGates, x: torch.Tensor, params: GateParams, *,
           noisy: bool) -> dict[str, torch.Tensor]:
    """The bits of one block's gates, by kind."""
    return {kind: gate_bits(value, threshold=getattr(params, kind), tau=params.tau,
                            noisy=noisy)
            for kind, value in gates.logits(x).items()}


def forward_masked(blocks: Sequence[nn.Module], gates: Sequence[BlockGates],
                   tokens: torch.Tensor, params: GateParams, *, noisy: bool,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Everything computed, each part multiplied by its bit (training; with ``noisy``
    False, the reference formulation of evaluation)."""
    x = blocks[0](tokens)
    record: dict[str, list[torch.Tensor]] = {kind: [] for kind in params.kinds}
    for block, gate in zip(blocks[1:], gates, strict=True):
        bits = decide(gate, x, params, noisy=noisy)
        for kind, value in bits.items():
            record[kind].append(value)
        keep, keys = 1.0, None
        if "patches" in bits:
            cls = bits["patches"].new_ones(x.shape[0], 1)
            token_bits = torch.cat([cls, bits["patches"]], dim=1)
            keep, keys = token_bits[..., None], token_bits.detach() > 0.5
        s_attn = s_ffn = 1.0
        if "branches" in bits:
            s_attn, s_ffn = bits["branches"][:, 0, None, None], bits["branches"][:, 1, None, None]
        for ffn in block.pre_ffns:
            x = x + s_ffn * keep * ffn.mlp(ffn.norm(x))
        x = x + s_attn * keep * block.attn(block.norm1(x), keys, bits.get("heads"))
        x = x + s_ffn * keep * block.mlp_branch(x)
    return x, _aux(record)


def forward_skipping(blocks: Sequence[nn.Module], gates: Sequence[BlockGates],
                     tokens: torch.Tensor, params: GateParams,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Only what is on is computed (evaluation); same result as :func:`forward_masked`
    without noise."""
    x = blocks[0](tokens)
    b, t, _ = x.shape
    record: dict[str, list[torch.Tensor]] = {kind: [] for kind in params.kinds}
    every_head = torch.ones(b, blocks[0].attn.num_heads, dtype=torch.bool, device=x.device)
    both = torch.ones(b, 2, dtype=torch.bool, device=x.device)
    for block, gate in zip(blocks[1:], gates, strict=True):
        bits = decide(gate, x, params, noisy=False)
        for kind, value in bits.items():
            record[kind].append(value)
        heads = bits["heads"].bool() if "heads" in bits else every_head
        branches = bits["branches"].bool() if "branches" in bits else both
        if "patches" not in bits:
            x = run_block(block, x, None, heads, branches)
            continue
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device),
                          bits["patches"].bool()], dim=1)
        if bool(keep.all()):
            x = run_block(block, x, None, heads, branches)
            continue
        packing = ragged.pack(keep)  # every row keeps its class token
        out = x.clone()
        for g in packing.groups():
            r = g.rows[:, None]
            part = x[r, g.pos]
            new = run_block(block, part, g.valid, heads[g.rows], branches[g.rows])
            out[r, g.pos] = new if g.valid is None else torch.where(g.valid[..., None], new,
                                                                     part)
        x = out
    return x, _aux(record)


def run_block(block: nn.Module, x: torch.Tensor, valid: torch.Tensor | None,
              heads: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
    """One block on rows ``x`` (R, n, D) (``valid``: their real tokens, None = all): the FFNs
    for rows whose FFN bit is set, the attention for rows whose attention bit is set and that
    keep a head (each head for the rows that keep it); a row whose attention is on with every
    head off adds only the projection's bias, as in the masked formulation."""
    ffn_on, attn_on = branches[:, 1], branches[:, 0]
    compute = attn_on & heads.any(dim=1)
    for ffn in block.pre_ffns:
        x = on_rows(x, ffn_on, lambda part, rows, ffn=ffn: ffn(part))

    def attention(part: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        mask = valid if valid is None or rows is None else valid[rows]
        on = heads if rows is None else heads[rows]
        return part + block.attn.forward_heads(block.norm1(part), mask, on)

    x = on_rows(x, compute, attention)
    bias_only = attn_on & ~compute
    if bool(bias_only.any()):
        x = x + bias_only[:, None, None].to(x.dtype) * block.attn.proj.bias
    return on_rows(x, ffn_on, lambda part, rows: part + block.mlp_branch(part))


def on_rows(x: torch.Tensor, on: torch.Tensor,
            fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
    """``fn(x[rows], rows)`` written back for the rows where ``on`` (rows None: all of them)."""
    if bool(on.all()):
        return fn(x, None)
    rows = on.nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    out = x.clone()
    out[rows] = fn(x[rows], rows)
    return out


def _aux(record: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"gate_{kind}": torch.stack(values, dim=1) for kind, values in record.items()
            if values}
