"""Self-attention over tokens (B, N, dim) with per-head Q/K width and V width chosen apart.

Two kinds:

- ``"mhsa"``: standard multi-head self-attention. One ``qkv`` Linear (with bias) produces, in
  this order, all heads' queries (heads x qk_dim), keys (heads x qk_dim) and values
  (heads x v_dim); ``proj`` maps heads x v_dim back to dim. With qk_dim == v_dim == dim / heads
  this is exactly timm's ``Attention`` layout (same names, shapes and channel order).
- ``"cga"``: cascaded group attention (EfficientViT, Liu et al. CVPR 2023) applied to a token
  sequence. The input channels are split into ``num_heads`` chunks; head i reads chunk i plus
  the output of head i-1, has its own Linear to q, k (qk_dim each) and v (dim / heads: the
  cascade adds a head's output to the next head's input, so the value width is the split);
  head outputs are concatenated and projected back by ``proj``. Unlike EfficientViT's
  convolutional version there is no depthwise conv on q, no relative-position bias and no ReLU
  before ``proj``: tokens here carry a class token and an absolute position embedding.

Both take ``forward(x, mask=None)``. ``mask`` is boolean, True = keep, and is either a key mask
(B, N) (the tokens that may be attended to, e.g. not yet halted or not gated off), a query-key
mask (B, N, N), or a per-head mask (B, heads, N, N). Masked tokens still produce outputs as
queries; callers decide what to do with them. Every query must keep at least one key (keep
the class token), otherwise its softmax is undefined.

Head gates (AdaViT, search_spaces/policies/gating/gates.py) use two more entry points:
``forward(x, mask, heads)`` scales each head's output by ``heads`` (B, H) before the projection
(the masked training formulation: every head computed), and ``forward_heads(x, mask, on)``
computes, for each head, only the images whose bit in ``on`` (bool (B, H)) is set: that head's
Q/K/V rows of the projection, its attention and its slice of ``proj`` (a head that is off costs
nothing; its output is zero, as in the masked formulation). Both give the same result.

DVT's relationship reuse (search_spaces/policies/cascade/model.py) uses ``forward_logits(x,
bias)``: the same attention unfused, with ``bias`` (B, H, N, N) (or None) added to the
pre-softmax logits ``q k^T / sqrt(qk_dim)``; it returns the output and those logits (bias
included). The fused path stays the one every other caller runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_KINDS = ("mhsa", "cga")


def sdpa_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A keep-mask (B, N), (B, N, N) or (B, H, N, N) as a 4-d boolean mask for SDPA."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean (True = keep), got {mask.dtype}")
    if mask.dim() == 2:
        return mask[:, None, None, :]
    if mask.dim() == 3:
        return mask[:, None]
    if mask.dim() == 4:
        return mask
    raise ValueError(f"attention mask must have 2, 3 or 4 dims, got shape {tuple(mask.shape)}")


def attention_logits(q: torch.Tensor, k: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """``q k^T / sqrt(d)`` (SDPA's default scale) plus ``bias`` if given."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return logits if bias is None else logits + bias


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention; ``qk_dim``/``v_dim`` are per head (None = dim // heads)."""

    def __init__(self, dim: int, num_heads: int, *, qk_dim: int | None = None,
                 v_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qk_dim = dim // num_heads if qk_dim is None else qk_dim
        self.v_dim = dim // num_heads if v_dim is None else v_dim
        self.qkv = nn.Linear(dim, num_heads * (2 * self.qk_dim + self.v_dim))
        self.proj = nn.Linear(num_heads * self.v_dim, dim)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (B, H, N, qk_dim) and values (B, H, N, v_dim) of tokens (B, N, dim)."""
        b, n, _ = x.shape
        h, qk, v = self.num_heads, self.qk_dim, self.v_dim
        q, k, val = self.qkv(x).split([h * qk, h * qk, h * v], dim=-1)
        return (q.view(b, n, h, qk).transpose(1, 2), k.view(b, n, h, qk).transpose(1, 2),
                val.view(b, n, h, v).transpose(1, 2))

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs (B, H, N, v_dim) through ``proj``: (B, N, dim)."""
        b, h, n, v = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, h * v))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                heads: torch.Tensor | None = None) -> torch.Tensor:
        q, k, val = self.split_heads(x)
        out = F.scaled_dot_product_attention(q, k, val, attn_mask=sdpa_mask(mask))
        if heads is not None:
            out = out * heads[:, :, None, None].to(out.dtype)
        return self.merge_heads(out)

    def forward_logits(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unfused attention with ``bias`` (B, H, N, N) added before the softmax; returns
        the output and the pre-softmax logits (B, H, N, N)."""
        q, k, val = self.split_heads(x)
        logits = attention_logits(q, k, bias)
        return self.merge_heads(logits.softmax(dim=-1) @ val), logits

    def head_rows(self, head: int) -> torch.Tensor:
        """The rows of ``qkv`` that give head ``head``'s query, key and value."""
        h, qk, v = self.num_heads, self.qk_dim, self.v_dim
        device = self.qkv.weight.device
        return torch.cat([torch.arange(head * qk, (head + 1) * qk, device=device),
                          torch.arange((h + head) * qk, (h + head + 1) * qk, device=device),
                          torch.arange(2 * h * qk + head * v, 2 * h * qk + (head + 1) * v,
                                       device=device)])

    def forward_heads(self, x: torch.Tensor, mask: torch.Tensor | None,
                      on: torch.Tensor) -> torch.Tensor:
        """Each head computed only for the images whose bit in ``on`` (B, H) is set."""
        if bool(on.all()):
            return self.forward(x, mask)
        b, n, _ = x.shape
        qk, v = self.qk_dim, self.v_dim
        out = x.new_zeros(b, n, self.proj.out_features)
        for head in range(self.num_heads):
            rows = on[:, head].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sel = self.head_rows(head)
            part = x if rows.numel() == b else x[rows]
            q, k, val = F.linear(part, self.qkv.weight[sel], self.qkv.bias[sel]).unsqueeze(
                1).split([qk, qk, v], dim=-1)
            m = None if mask is None else sdpa_mask(mask if rows.numel() == b else mask[rows])
            o = F.scaled_dot_product_attention(q, k, val, attn_mask=m).squeeze(1)
            out.index_add_(0, rows, F.linear(o, self.proj.weight[:, head * v:(head + 1) * v]))
        return out + self.proj.bias


class TokenGroupAttention(nn.Module):
    """EfficientViT's cascaded group attention (CGA) on tokens (see the module docstring);
    needs heads | dim."""

    def __init__(self, dim: int, num_heads: int, *, qk_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cga: num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.split = dim // num_heads
        self.qk_dim = self.split if qk_dim is None else qk_dim
        self.qkvs = nn.ModuleList(
            nn.Linear(self.split, 2 * self.qk_dim + self.split) for _ in range(num_heads)
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                heads: torch.Tensor | None = None) -> torch.Tensor:
        m = sdpa_mask(mask)
        chunks = x.chunk(self.num_heads, dim=-1)
        outs: list[torch.Tensor] = []
        for i, qkv in enumerate(self.qkvs):
            inp = chunks[i] if i == 0 else chunks[i] + outs[-1]
            q, k, v = qkv(inp).unsqueeze(1).split([self.qk_dim, self.qk_dim, self.split], -1)
            head_mask = m[:, i:i + 1] if m is not None and m.shape[1] > 1 else m
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=head_mask).squeeze(1)
            if heads is not None:  # an off head gives zero, to the next head and to proj
                out = out * heads[:, i, None, None].to(out.dtype)
            outs.append(out)
        return self.proj(torch.cat(outs, dim=-1))

    def forward_logits(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unfused cascaded attention, head i's logits plus ``bias[:, i]``; returns the
        output and the pre-softmax logits (B, H, N, N)."""
        chunks = x.chunk(self.num_heads, dim=-1)
        outs: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for i, qkv in enumerate(self.qkvs):
            inp = chunks[i] if i == 0 else chunks[i] + outs[-1]
            q, k, v = qkv(inp).split([self.qk_dim, self.qk_dim, self.split], -1)
            logits.append(attention_logits(q, k, None if bias is None else bias[:, i]))
            outs.append(logits[-1].softmax(dim=-1) @ v)
        return self.proj(torch.cat(outs, dim=-1)), torch.stack(logits, dim=1)

    def forward_heads(self, x: torch.Tensor, mask: torch.Tensor | None,
                      on: torch.Tensor) -> torch.Tensor:
        """Each head computed only for the images whose bit in ``on`` (B, H) is set; an off
        head passes zero down the cascade."""
        if bool(on.all()):
            return self.forward(x, mask)
        b, n, _ = x.shape
        chunks = x.chunk(self.num_heads, dim=-1)
        out = x.new_zeros(b, n, self.proj.out_features)
        previous = None
        for i, qkv in enumerate(self.qkvs):
            rows = on[:, i].nonzero().squeeze(1)
            head = x.new_zeros(b, n, self.split)
            if rows.numel():
                inp = chunks[i] if previous is None else chunks[i] + previous
                q, k, v = qkv(inp[rows]).unsqueeze(1).split(
                    [self.qk_dim, self.qk_dim, self.split], -1)
                m = None if mask is None else sdpa_mask(mask[rows])
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=m).squeeze(1)
                head[rows] = o
                cols = slice(i * self.split, (i + 1) * self.split)
                out.index_add_(0, rows, F.linear(o, self.proj.weight[:, cols]))
            previous = head
        return out + self.proj.bias


def build_attention(kind: str, dim: int, num_heads: int, *, qk_dim: int | None = None,
                    v_dim: int | None = None) -> nn.Module:
    """The attention of ``kind`` (one of ATTENTION_KINDS). For ``"cga"`` the value width is
    the input split dim // heads, so ``v_dim`` must be None or equal to it."""
    if kind == "mhsa":
        return MultiHeadAttention(dim, num_heads, qk_dim=qk_dim, v_dim=v_dim)
    if kind == "cga":
        if v_dim is not None and v_dim != dim // num_heads:
            raise ValueError(f"cga: v_dim={v_dim} must be None or dim // num_heads "
                             f"= {dim // num_heads} (the cascade adds outputs to inputs)")
        return TokenGroupAttention(dim, num_heads, qk_dim=qk_dim)
    raise ValueError(f"attention kind {kind!r} is not known; allowed: {ATTENTION_KINDS}")
