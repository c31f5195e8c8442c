"""Ragged token packing: run a block only on the tokens each image keeps.

Adaptive token policies (A-ViT halting, AdaViT patch gates) leave every image of a batch with
its own set of tokens. To compute only those, :func:`pack` moves each row's kept tokens to the
front (in their original order, so the class token stays first), sorts the rows by how many
they keep (longest first) and cuts the batch to the longest row; the shorter rows are padded,
and the padding is a key mask. :func:`split` then cuts the sorted rows into groups wherever
one group would carry more than ``PAD_SPLIT`` padding, each group cut to its own longest row:
a few long images do not make every image pay for their length
(results/benchmarks/halting.md has the measurements).

Only indices are computed here; each policy gathers its own tensors with them.
"""

from __future__ import annotations

import dataclasses

import torch

PAD_SPLIT = 0.25  # split a group of rows when padding would exceed this share of its tokens


@dataclasses.dataclass(frozen=True)
class Packing:
    """Rows ``rows`` of a batch (longest first), their kept token positions ``pos`` (R, W)
    packed to the front, ``valid`` (R, W) marking the real ones and each row's count."""

    rows: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    lengths: list[int]

    def groups(self, limit: float | None = None) -> list[Group]:
        """The rows cut into groups of at most ``limit`` padding (default ``PAD_SPLIT``, read
        at each call; see :func:`split`)."""
        out = []
        for start, end in split(self.lengths, limit):
            width, shortest = self.lengths[start], self.lengths[end - 1]
            s, w = slice(start, end), slice(0, width)
            out.append(Group(rows=self.rows[s], pos=self.pos[s, w],
                             valid=None if shortest == width else self.valid[s, w],
                             lengths=self.lengths[start:end], first=start))
        return out


@dataclasses.dataclass(frozen=True)
class Group:
    """One group of packed rows: ``valid`` is None when no row of it is padded; ``first``
    is its first row's index in the packing."""

    rows: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor | None
    lengths: list[int]
    first: int


def pack(keep: torch.Tensor, rows: torch.Tensor | None = None) -> Packing | None:
    """Pack the kept tokens (``keep``, bool (B, T)) of ``rows`` (default: every row that keeps
    a token); None when no row keeps any."""
    if rows is None:
        rows = keep.any(dim=1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return None
    keep = keep[rows]
    lengths = keep.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    rows, keep, lengths = rows[order], keep[order], lengths[order]
    sizes = lengths.tolist()
    pos = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :sizes[0]]
    return Packing(rows=rows, pos=pos, valid=torch.gather(keep, 1, pos), lengths=sizes)


def split(sizes: list[int], limit: float | None = None) -> list[tuple[int, int]]:
    """Row ranges [start, end) of ``sizes`` (sorted, longest first): a range ends where adding
    the next row would make its padding exceed ``limit`` (default ``PAD_SPLIT``) of its
    tokens."""
    limit = PAD_SPLIT if limit is None else limit
    parts, start = [], 0
    for end in range(1, len(sizes) + 1):
        if end == len(sizes) or padding(sizes[start:end + 1]) > limit:
            parts.append((start, end))
            start = end
    return parts


def padding(sizes: list[int]) -> float:
    """Share of padding in a group of rows of these lengths (the first is the longest)."""
    return 1.0 - sum(sizes) / (sizes[0] * len(sizes))
