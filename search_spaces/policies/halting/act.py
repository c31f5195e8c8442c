"""A-ViT token halting for the isotropic ViT, with real token removal at inference.

"A-ViT: Adaptive Tokens for Efficient Vision Transformer", Yin et al., CVPR 2022,
https://arxiv.org/abs/2112.07658 (PAPERS.md section 2).

After block l every token k gets a halting score h = sigmoid(gamma * t_k[0] + beta) from
channel 0 of its own output (no extra parameters); at the last block h = 1. ACT bookkeeping
per token: the cumulative score c += h; a token halts once c > 1 - eps. Its remainder R
starts at 1; while it runs it contributes h x (its block output) and R -= h, and when it halts
it contributes R. Ponder rho = blocks run + final remainder. The class token halts like the
others, and the model's output is the weighted sum of the class token's block outputs (the
mean-field output), so an image is finished as soon as its class token halts.

Two ways to run the same model, giving the same logits:

- :func:`forward_masked` (training): every token goes through every block; halted tokens are
  excluded as attention keys and their state is frozen. Differentiable through h and R.
- :func:`forward_removal` (evaluation, export): halted tokens leave the computation. After
  each block the still-running tokens of each image are packed to the front (class token
  first), the batch is cut to the longest image and the rest is a key-padding mask; images
  whose class token halted leave the batch. The rows are then sorted by length and split
  where a group would carry more than ``ragged.PAD_SPLIT`` padding
  (search_spaces/layers/ragged.py, shared with AdaViT's patch gates).

Both return the class token's mean-field output and ``aux`` tensors: ``tokens_per_block``
(B, L), the tokens each image really runs through each block (0 once its class token halted:
what a cost model multiplies), and ``halt_depth`` (B, T), the blocks each token ran. The
masked path adds ``rho`` (B, T) and ``halt_distribution`` (B, L) (per image, the mean over
tokens of the halting score given at block l by tokens still running) for the losses.

The model that runs them is search_spaces/policies/halting/model.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ...layers import ragged
from .fields import HaltingParams


@dataclasses.dataclass
class ActState:
    """Per-token ACT state: cumulative score ``c``, remainder ``R`` and ponder ``rho``."""

    c: torch.Tensor
    remainder: torch.Tensor
    rho: torch.Tensor

    @classmethod
    def start(cls, like: torch.Tensor) -> ActState:
        zeros = torch.zeros(like.shape[:2], device=like.device, dtype=like.dtype)
        return cls(c=zeros, remainder=torch.ones_like(zeros), rho=zeros.clone())


def halting_score(tokens: torch.Tensor, params: HaltingParams, *, last: bool) -> torch.Tensor:
    """h (B, T) from channel 0 of block outputs (B, T, D); 1 everywhere after the last block."""
    if last:
        return torch.ones(tokens.shape[:2], device=tokens.device, dtype=tokens.dtype)
    return torch.sigmoid(params.gamma * tokens[..., 0] + params.beta)


def act_step(state: ActState, h: torch.Tensor, running: torch.Tensor, eps: float,
             ) -> tuple[ActState, torch.Tensor, torch.Tensor]:
    """One block of ACT bookkeeping for the tokens that ran it (``running``, bool (B, T)).

    Returns the new state, each token's output weight for this block (R for a token halting
    now, h for one still running, 0 for one already halted) and the new running mask.
    """
    h = torch.where(running, h, torch.zeros_like(h))
    c = state.c + h
    halts = running & (c > 1.0 - eps)
    goes_on = running & ~halts
    weight = torch.where(halts, state.remainder, h)
    rho = state.rho + running.to(h.dtype) + torch.where(halts, state.remainder, 0.0)
    remainder = state.remainder - torch.where(goes_on, h, 0.0)
    return ActState(c=c, remainder=remainder, rho=rho), weight, goes_on


def forward_masked(blocks: Sequence[nn.Module], tokens: torch.Tensor, params: HaltingParams,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every token through every block, halted ones frozen and hidden from attention.

    ``tokens`` (B, T, D), class token first. Returns the class token's output (B, D) and aux.
    """
    b, t, _ = tokens.shape
    state, running = ActState.start(tokens), torch.ones(b, t, dtype=torch.bool,
                                                        device=tokens.device)
    out = torch.zeros_like(tokens[:, 0])
    counts, distribution = [], []
    depth = torch.zeros(b, t, dtype=torch.long, device=tokens.device)
    x = tokens
    for index, block in enumerate(blocks):
        counts.append(torch.where(running[:, 0], running.sum(1), 0))
        depth += running
        # an image whose tokens all halted keeps its keys: its outputs are discarded anyway,
        # and a query without keys would give NaN (and NaN gradients through where())
        keys = running | ~running.any(dim=1, keepdim=True)
        x = torch.where(running[..., None], block(x, keys), x)
        h = halting_score(x, params, last=index == len(blocks) - 1)
        distribution.append(torch.where(running, h, 0.0).mean(dim=1))
        state, weight, running = act_step(state, h, running, params.eps)
        out = out + weight[:, :1] * x[:, 0]
    aux = {"rho": state.rho, "halt_depth": depth,
           "halt_distribution": torch.stack(distribution, dim=1),
           "tokens_per_block": torch.stack(counts, dim=1)}
    return out, aux


def forward_removal(blocks: Sequence[nn.Module], tokens: torch.Tensor, params: HaltingParams,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Halted tokens (and images whose class token halted) leave the computation.

    Same logits as :func:`forward_masked` in eval mode; ``aux`` has ``tokens_per_block`` and
    ``halt_depth`` (blocks each token ran; the tokens of an image that finished early count
    the blocks that ran before it finished).
    """
    b, t, _ = tokens.shape
    out = torch.zeros_like(tokens[:, 0])
    counts = torch.zeros(b, len(blocks), dtype=torch.long, device=tokens.device)
    depth = torch.zeros(b, t, dtype=torch.long, device=tokens.device)
    groups = [_Group.start(tokens)]
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        next_groups: list[_Group] = []
        for g in groups:
            counts[g.image, index] = g.lengths
            g.x = block(g.x, g.valid)
            running = g.running()
            h = halting_score(g.x, params, last=last)
            g.state, weight, going = act_step(g.state, h, running, params.eps)
            out.index_add_(0, g.image, weight[:, :1] * g.x[:, 0])
            next_groups += g.shrink(running, going, depth, index + 1)
        groups = next_groups
        if not groups:
            break
    return out, {"tokens_per_block": counts, "halt_depth": depth}


@dataclasses.dataclass
class _Group:
    """A padded batch of still-running images: rows of ``x`` are images (``image`` says
    which), positions are tokens (``token`` says which). ``valid`` marks the real tokens,
    None when no row is padded; ``lengths`` counts them per row."""

    x: torch.Tensor
    state: ActState
    valid: torch.Tensor | None
    image: torch.Tensor
    token: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def start(cls, tokens: torch.Tensor) -> _Group:
        b, t, _ = tokens.shape
        device = tokens.device
        return cls(x=tokens, state=ActState.start(tokens), valid=None,
                   image=torch.arange(b, device=device),
                   token=torch.arange(t, device=device).expand(b, t),
                   lengths=torch.full((b,), t, device=device))

    def running(self) -> torch.Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.x.shape[:2], dtype=torch.bool, device=self.x.device)

    def shrink(self, running: torch.Tensor, going: torch.Tensor, depth: torch.Tensor,
               blocks_run: int) -> list[_Group]:
        """Record the depth of the tokens that leave, drop them and the finished images;
        pack each row's staying tokens to the front, sort rows by length and split
        (search_spaces/layers/ragged.py)."""
        stay = going & going[:, :1]  # running on, in an image whose class token runs on
        leave = running & ~stay
        flat = self.image[:, None] * depth.shape[1] + self.token
        depth.view(-1)[flat[leave]] = blocks_run
        if self.x.shape[0] == 1:
            return self._one_row(stay[0])
        packing = ragged.pack(stay, stay[:, 0].nonzero().squeeze(1))
        return [] if packing is None else [self._gather(g) for g in packing.groups()]

    def _gather(self, g: ragged.Group) -> _Group:
        r, pos = g.rows[:, None], g.pos
        return _Group(x=self.x[r, pos], valid=g.valid,
                      state=ActState(self.state.c[r, pos], self.state.remainder[r, pos],
                                     self.state.rho[r, pos]),
                      image=self.image[g.rows], token=self.token[r, pos],
                      lengths=torch.tensor(g.lengths, device=self.x.device))

    def _one_row(self, stay: torch.Tensor) -> list[_Group]:
        """A single image: no sorting and no padding, just its staying tokens."""
        if not bool(stay[0]):
            return []
        pos = stay.nonzero().squeeze(1)
        return [_Group(x=self.x.index_select(1, pos), valid=None,
                       state=ActState(*(s.index_select(1, pos) for s in (
                           self.state.c, self.state.remainder, self.state.rho))),
                       image=self.image, token=self.token.index_select(1, pos),
                       lengths=pos.new_full((1,), pos.numel()))]
