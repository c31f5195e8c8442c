"""Loss functions: pure functions of tensors, and the training objective of each candidate.

An adaptive family declares its auxiliary terms as :class:`~search_spaces.adaptive.LossTerm`
(the name of a function of :data:`TERMS`, the aux tensors it reads, its weight);
:func:`objective_for` adds them to the cross-entropy without knowing the family.

A-ViT (PAPERS.md section 2; Yin et al. CVPR 2022) trains with
``task + alpha_p * mean(rho) + alpha_d * KL(target || halting distribution)``: the ponder
loss pushes tokens to halt early, the distribution prior shapes where they halt (a Gaussian
over the block index around the target depth). The official code averages the halting
distribution over ``h[1:]`` of a (batch, tokens) tensor, dropping the first image instead of
the class token; here the batch mean is taken over every image and token.

AdaViT (PAPERS.md section 3; Meng et al. CVPR 2022) adds usage losses that pull the share of
heads, branches and patch tokens its gates keep toward targets (:func:`usage_loss`,
:func:`usage_where_loss`).

DVT (PAPERS.md section 4; Wang et al. NeurIPS 2021) trains its cascade on the sum of the
stages' cross-entropies with equal weights: the last stage's is the main loss, the earlier
ones :func:`stage_cross_entropy` (with the training's label smoothing, as every term whose
kind is in :data:`SMOOTHED`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

import search_spaces
from search_spaces.adaptive import Adaptive, LossTerm
from search_spaces.config import Config
from search_spaces.output import ModelOutput

LossFn = Callable[[torch.Tensor | ModelOutput, torch.Tensor], torch.Tensor]
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


def depth_prior_loss(distribution: torch.Tensor, *, mean: float, std: float = 1.0,
                     weight: float) -> torch.Tensor:
    """:func:`halting_prior_loss` against a Gaussian over the L blocks of ``distribution``
    (B, L) centred on block ``mean`` (:func:`gaussian_depth_prior`)."""
    target = gaussian_depth_prior(distribution.shape[1], mean=mean, std=std)
    return halting_prior_loss(distribution, target=target, weight=weight)


def usage_loss(bits: torch.Tensor, *, target: float, weight: float,
               power: int = 1) -> torch.Tensor:
    """``weight * |mean(bits) - target| ** power`` over every entry of ``bits`` (AdaViT's
    usage losses: power 1 for heads and branches, 2 for patch tokens)."""
    return weight * (bits.float().mean() - target).abs() ** power


def usage_where_loss(bits: torch.Tensor, switches: torch.Tensor, *, index: int,
                     target: float, weight: float) -> torch.Tensor:
    """``weight * |mean(bits) - target|``, the mean taken only where ``switches[..., index]``
    is on: ``bits`` (B, L, H), ``switches`` (B, L, S), e.g. head bits over the blocks whose
    attention branch is on (the switch is a mask: no gradient flows through it)."""
    on = (switches[..., index].detach() > 0.5).to(bits.dtype)
    mean = (bits * on[..., None]).sum() / (on.sum() * bits.shape[-1]).clamp_min(LOG_FLOOR)
    return weight * (mean - target).abs()


def stage_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, weight: float,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """``weight * sum_s CE(logits[:, s], labels)`` over the S stages of ``logits`` (B, S, C)."""
    b, s, c = logits.shape
    per_stage = F.cross_entropy(logits.float().reshape(b * s, c), labels.repeat_interleave(s),
                                label_smoothing=label_smoothing)
    return weight * s * per_stage  # the mean over B*S entries, times S: the sum over stages


# Loss terms by name: what a family's LossTerm.kind names (search_spaces/adaptive.py).
TermFn = Callable[..., torch.Tensor]
TERMS: dict[str, TermFn] = {"ponder": ponder_loss, "depth_prior": depth_prior_loss,
                            "usage": usage_loss, "usage_where": usage_where_loss,
                            "stage_cross_entropy": stage_cross_entropy}
SMOOTHED = {"stage_cross_entropy"}  # terms given the training's label_smoothing


def register_term(kind: str, fn: TermFn) -> None:
    """Make ``fn(*inputs, weight=..., **options)`` available to LossTerms as ``kind`` (for
    families that live outside this package)."""
    if kind in TERMS and TERMS[kind] is not fn:
        raise ValueError(f"loss term {kind!r} is registered already")
    TERMS[kind] = fn


def term_loss(term: LossTerm, output: ModelOutput, labels: torch.Tensor, *,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """One auxiliary term of a family's loss: ``TERMS[term.kind]`` on the aux tensors (or
    the labels) that the term names (a kind in :data:`SMOOTHED` also gets
    ``label_smoothing``)."""
    if term.kind not in TERMS:
        raise KeyError(f"loss term {term.kind!r} is not known; known: {sorted(TERMS)}")
    inputs = [labels if name == "labels" else output.aux[name] for name in term.inputs]
    options = dict(term.options)
    if term.kind in SMOOTHED:
        options.setdefault("label_smoothing", label_smoothing)
    return TERMS[term.kind](*inputs, weight=term.weight, **options)


def adaptive_objective(terms: Sequence[LossTerm], *, label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy on the logits plus each term of ``terms`` (a ModelOutput's aux)."""
    terms = tuple(terms)

    def loss(output: torch.Tensor | ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, ModelOutput):
            raise TypeError("an adaptive objective needs the model's ModelOutput")
        total = F.cross_entropy(output.logits.float(), labels, label_smoothing=label_smoothing)
        for term in terms:
            total = total + term_loss(term, output, labels, label_smoothing=label_smoothing)
        return total

    return loss


def objective_for(candidate: Config | Adaptive | None, *,
                  label_smoothing: float = 0.0) -> LossFn | None:
    """The training loss a candidate needs beyond plain cross-entropy, or None: an adaptive
    candidate's loss terms (given its config, whose space says its :class:`Adaptive`, or
    that Adaptive itself); None for a static one (it trains on label-smoothed
    cross-entropy)."""
    adaptive = candidate
    if isinstance(candidate, Config) and getattr(candidate, "KIND", None) in search_spaces.names():
        adaptive = search_spaces.get(candidate.KIND).adaptive(candidate)
    if not isinstance(adaptive, Adaptive):
        return None
    return adaptive_objective(adaptive.loss_terms(), label_smoothing=label_smoothing)
