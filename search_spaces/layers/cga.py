"""Cascaded group attention (EfficientViT, arXiv 2305.07027) on 2D feature maps, in windows.

Each head sees a different channel chunk of the input, plus the output of the previous head
(the cascade), which both cuts the redundancy between heads and deepens the network for free.
Per head: a 1x1 ConvBN gives q, k (``key_dim`` each) and v (``value_dim``); q passes a
depthwise ConvBN of the head's own kernel size; logits = scale * q.k + a learned bias per
head indexed by the absolute offset (|dy|, |dx|) between the two tokens of the window.

Parameter names (``qkvs``, ``dws``, ``proj``, ``attention_biases``) follow the layout of the
official code and timm, so their checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvBN


def relative_offset_index(window: int) -> torch.Tensor:
    """(N, N) long tensor, N = window**2: index |dy| * window + |dx| of each token pair."""
    coords = torch.arange(window)
    ys = coords.repeat_interleave(window)
    xs = coords.repeat(window)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window + dx


class GroupAttention(nn.Module):
    """EfficientViT's cascaded group attention (CGA) over one ``window`` x ``window`` map:
    (B, dim, window, window) -> same shape.

    ``value_dim`` (per head) may differ from the chunk width ``dim // num_heads``: the cascade
    then adds the previous head's output onto the first ``min(chunk, value_dim)`` channels of
    the next chunk (parameter-free; with ``value_dim == chunk``, the paper's choice, this is the
    plain sum of the paper).
    """

    def __init__(self, dim: int, *, key_dim: int, num_heads: int, value_dim: int, window: int,
                 kernels: Sequence[int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.chunk = dim // num_heads
        self.scale = key_dim**-0.5
        self.qkvs = nn.ModuleList(
            ConvBN(self.chunk, 2 * key_dim + value_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(
            ConvBN(key_dim, key_dim, kernels[i], groups=key_dim) for i in range(num_heads))
        self.proj = nn.Sequential(
            nn.ReLU(inplace=True), ConvBN(value_dim * num_heads, dim, bn_weight_init=0.0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", relative_offset_index(window),
                             persistent=False)

    def _with_previous(self, chunk: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        if self.value_dim == self.chunk:
            return chunk + previous
        n = min(self.chunk, self.value_dim)
        head = chunk[:, :n] + previous[:, :n]
        return head if n == self.chunk else torch.cat((head, chunk[:, n:]), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        chunks = x.chunk(self.num_heads, dim=1)
        biases = self.attention_biases[:, self.attention_bias_idxs]
        split = (self.key_dim, self.key_dim, self.value_dim)
        outs = []
        feat = chunks[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws, strict=True)):
            if i > 0:
                feat = self._with_previous(chunks[i], feat)
            q, k, v = qkv(feat).split(split, dim=1)
            q = _tokens(dw(q)) * self.scale
            attn = torch.matmul(q, _tokens(k).transpose(1, 2)) + biases[i]
            out = torch.matmul(attn.softmax(dim=-1), _tokens(v))  # (B, H*W, value_dim)
            feat = out.view(B, H, W, -1).permute(0, 3, 1, 2)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``x`` is channels-last, as the model runs."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class WindowedCGA(nn.Module):
    """CGA in non-overlapping windows of ``min(window_size, resolution)``.

    Maps not a multiple of the window are zero-padded at the bottom/right before partitioning
    and cropped after; a map equal to the window skips the partitioning.
    """

    def __init__(self, dim: int, *, key_dim: int, num_heads: int, value_dim: int,
                 resolution: int, window_size: int, kernels: Sequence[int]) -> None:
        super().__init__()
        self.window = min(window_size, resolution)
        self.attn = GroupAttention(dim, key_dim=key_dim, num_heads=num_heads,
                                           value_dim=value_dim, window=self.window,
                                           kernels=kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ws = self.window
        if (H, W) == (ws, ws):
            return self.attn(x)
        # partition in (B, H, W, C) order: free views for channels-last maps
        pad_h, pad_w = -H % ws, -W % ws
        x = x.permute(0, 2, 3, 1)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        nh, nw = (H + pad_h) // ws, (W + pad_w) // ws
        x = x.view(B, nh, ws, nw, ws, C).transpose(2, 3).reshape(-1, ws, ws, C)
        x = self.attn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x.reshape(B, nh, nw, ws, ws, C).transpose(2, 3).reshape(B, nh * ws, nw * ws, C)
        if pad_h or pad_w:
            x = x[:, :H, :W]
        return x.permute(0, 3, 1, 2)


# what pruning keeps whole in any cascaded group attention (search_spaces/structure.py)
UNPRUNABLE = {
    "heads": "cascaded group attention reads one input chunk per head",
    "v": "cascaded group attention adds each head's V output to the next head's input",
    "width": "cascaded group attention splits the residual stream into one chunk per head",
}
