"""Loss functions: pure functions of tensors, and the training objective of each candidate.

A-ViT (PAPERS.md section 2; Yin et al. CVPR 2022) trains with
``task + alpha_p * mean(rho) + alpha_d * KL(target || halting distribution)``: the ponder
loss pushes tokens to halt early, the distribution prior shapes where they halt (a Gaussian
over the block index around the target depth). The official code averages the halting
distribution over ``h[1:]`` of a (batch, tokens) tensor, dropping the first image instead of
the class token; here the batch mean is taken over every image and token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from search_spaces.output import ModelOutput

LossFn = Callable[[torch.Tensor | ModelOutput, torch.Tensor], torch.Tensor]
PONDER_AT_12 = 5e-4  # A-ViT's README alpha_p, for 12 blocks
LOG_FLOOR = 1e-8  # the halting distribution is floored here before its log


def ponder_loss(rho: torch.Tensor, *, weight: float) -> torch.Tensor:
    """``weight * mean(rho)`` over every image and token; rho is (B, T)."""
    return weight * rho.mean()


def gaussian_depth_prior(depth: int, *, mean: float, std: float = 1.0) -> torch.Tensor:
    """A normalised Gaussian over block numbers 1..depth (halting after block k), (depth,)."""
    if depth < 1 or std <= 0:
        raise ValueError(f"depth={depth} must be >= 1 and std={std} > 0")
    k = torch.arange(1, depth + 1, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((k - mean) / std) ** 2)
    return (pdf / pdf.sum()).float()


def halting_prior_loss(distribution: torch.Tensor, *, target: torch.Tensor,
                       weight: float) -> torch.Tensor:
    """``weight * KL(target || q)``, q = the batch mean of ``distribution`` (B, L) normalised
    over the L blocks. Zero exactly when q equals ``target`` (L,)."""
    q = distribution.float().mean(dim=0)
    q = q / q.sum().clamp_min(LOG_FLOOR)
    target = target.to(q.device)
    kl = torch.where(target > 0, target * (target.log() - q.clamp_min(LOG_FLOOR).log()), 0.0)
    return weight * kl.sum()


def ponder_weight(ponder: float | None, depth: int) -> float:
    """alpha_p: as given, or (None) the paper's 5e-4 at 12 blocks scaled to ``depth``."""
    return PONDER_AT_12 * 12 / depth if ponder is None else ponder


def halting_objective(*, depth: int, target_fraction: float, ponder: float | None,
                      prior: float, label_smoothing: float = 0.0) -> LossFn:
    """A-ViT's training loss for a halting model's ``ModelOutput`` (reads aux ``rho`` and
    ``halt_distribution``); the target depth is ``target_fraction * depth`` blocks."""
    target = gaussian_depth_prior(depth, mean=target_fraction * depth)
    alpha_p = ponder_weight(ponder, depth)

    def loss(output: torch.Tensor | ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, ModelOutput):
            raise TypeError("the halting objective needs the model's ModelOutput")
        task = F.cross_entropy(output.logits.float(), labels, label_smoothing=label_smoothing)
        return (task + ponder_loss(output.aux["rho"].float(), weight=alpha_p)
                + halting_prior_loss(output.aux["halt_distribution"], target=target,
                                     weight=prior))

    return loss


def objective_for(config: Any, *, label_smoothing: float = 0.0) -> LossFn | None:
    """The training loss a candidate needs beyond plain cross-entropy, or None.

    Halting ``vit`` candidates get :func:`halting_objective` from their config's ``halt_*``
    fields; every other candidate trains on label-smoothed cross-entropy (None).
    """
    if getattr(config, "token_policy", "static") != "halting":
        return None
    return halting_objective(depth=config.depth, target_fraction=config.halt_target,
                             ponder=config.halt_ponder, prior=config.halt_prior,
                             label_smoothing=label_smoothing)

