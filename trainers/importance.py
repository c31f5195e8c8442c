"""First-order Taylor importance of structural groups (heads, Q/K, V, FFN channels, blocks).

"Importance Estimation for Neural Network Pruning", Molchanov, Mallya, Tyree, Frosio, Kautz;
CVPR 2019, https://arxiv.org/abs/1906.10771 (PAPERS.md section 1: EfficientViT's parameter
reallocation rests on this analysis of Swin-T and DeiT-T).

The score of a group G on one batch is the group-level Taylor FO criterion of the paper,

    s_G = (sum over the parameter entries p of G of w_p * g_p) ** 2,

where g is the gradient of the batch's mean cross-entropy: the squared first-order estimate
of the loss change when every parameter of G is set to zero, i.e. when the structure is
removed (a zeroed block of a residual network is the identity, a head with zeroed rows and
columns contributes nothing). Over several batches the per-batch scores are SUMMED (squares
of per-batch sums, not the square of a sum: the paper's accumulation, so that gradients of
opposite sign on different batches do not cancel). Sums run in float64; scores are float64.
The groups, and so which parameter entries enter each sum, are the family's answer
(``Structure.groups``, search_spaces/structure.py; trainers/groups.py asks for them).

Scoring runs the model in eval mode: BatchNorm uses its running statistics (EfficientViT's
ConvBN then folds them into the conv, still differentiably) and dropout is off, so the scores
describe the trained network as it will be used, not a noisy training-mode variant.

Score names (trainers/groups.py) are flat strings like ``blocks.3.attn.qk``; ``summarize``
reduces them to a few numbers per component and stage (the fraction of channels that carries
90% / 95% of a component's importance), ``retained_fractions`` to a table per block.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces.output import logits_of
from search_spaces.structure import COMPONENTS

from .data import Batch
from .groups import Groups, component, group_layout

COVERAGES = (0.9, 0.95)
_BLOCK = re.compile(r"^(blocks\.\d+|stages\.\d+\.blocks\.\d+|stages\.\d+\.downsample)\.")
_STAGE = re.compile(r"^stages\.(\d+)\.")


# -------------------------------------------------------------------------------- scoring
def group_scores(
    weights: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor | None],
    groups: Mapping[str, Groups],
) -> dict[str, torch.Tensor]:
    """Per name, the (size,) float64 vector of (sum over the group of weight * grad) ** 2.

    ``weights``/``grads`` are keyed like the state dict; parts whose key has no gradient
    (buffers, frozen or unused parameters) contribute nothing.
    """
    per_slice: dict[tuple[str, int], torch.Tensor] = {}
    scores = {}
    for name, group in groups.items():
        total: torch.Tensor | None = None
        for part in group.parts:
            grad = grads.get(part.key)
            if grad is None:
                continue
            cache = (part.key, part.axis)
            if cache not in per_slice:
                prod = weights[part.key].detach().double() * grad.detach().double()
                others = [d for d in range(prod.dim()) if d != part.axis]
                per_slice[cache] = prod.sum(dim=others) if others else prod
            vec = per_slice[cache]
            if total is None:
                total = torch.zeros(group.size, dtype=torch.float64, device=vec.device)
            ids = part.ids.to(vec.device)
            inside = ids >= 0
            total.index_add_(0, ids[inside], vec[inside])
        scores[name] = (total if total is not None
                        else torch.zeros(group.size, dtype=torch.float64)).square()
    return scores


def scores_from_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Group scores of ``model`` from the ``.grad`` its parameters hold now (one batch)."""
    params = dict(model.named_parameters())
    grads = {name: p.grad for name, p in params.items()}
    return group_scores(params, grads, group_layout(model))


def taylor_importance(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    num_batches: int,
    device: str | torch.device | None = None,
    answers: Callable[[Any], Sequence[torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of per-batch group scores over the first ``num_batches`` of ``batches`` (fewer if
    the iterable ends first; at least one is needed).

    Each batch: an eval-mode forward, the mean cross-entropy of the logits (a ``ModelOutput``
    gives its ``logits``; ``answers(output)``, e.g. ``Structure.answers``, gives several, whose
    cross-entropies are summed), and gradients by ``torch.autograd.grad``, so the parameters'
    ``.grad`` are never touched. ``device`` (default: the model's) is where it runs; the model
    goes back to its device and train/eval mode afterwards. Scores are returned on the CPU.
    """
    if num_batches < 1:
        raise ValueError(f"`num_batches` must be >= 1, got num_batches={num_batches}")
    groups = group_layout(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    home = next(model.parameters()).device
    target = torch.device(device) if device is not None else home
    was_training = model.training
    totals: dict[str, torch.Tensor] = {}
    model.to(target).eval()
    try:
        for x, y in itertools.islice(batches, num_batches):
            out, y = model(x.to(target)), y.to(target)
            loss = sum(F.cross_entropy(logits.float(), y) for logits in (
                answers(out) if answers is not None else [logits_of(out)]))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            batch = group_scores(dict(named), {n: g for (n, _), g in zip(named, grads,
                                                                         strict=True)}, groups)
            totals = {k: totals[k] + v if k in totals else v for k, v in batch.items()}
    finally:
        model.to(home).train(was_training)
    if not totals:
        raise ValueError("taylor_importance() got no batches")
    return {name: score.cpu() for name, score in totals.items()}


# ------------------------------------------------------------------------------ save/load
def save_scores(path: str | Path, scores: Mapping[str, torch.Tensor],
                metadata: Mapping[str, str] | None = None) -> None:
    """Write scores as safetensors (names as keys; their order kept in the metadata, as
    safetensors sorts keys and the order is the model's forward order), with the caller's
    ``metadata`` beside it."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in scores.items()}
    save_file(tensors, str(path), metadata={**(metadata or {}),
                                            "order": json.dumps(list(tensors))})


def load_scores(path: str | Path) -> dict[str, torch.Tensor]:
    """Read scores written by :func:`save_scores`, in their original order."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        order = json.loads((handle.metadata() or {}).get("order", "[]"))
    return {k: tensors[k] for k in order if k in tensors} | tensors


# ------------------------------------------------------------------------------ summaries
def keep_fraction(scores: torch.Tensor, coverage: float) -> float:
    """The smallest fraction of entries whose largest scores sum to >= ``coverage`` of the
    total (sort descending, cumulative sum); NaN when the total is 0 (nothing to cover)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"`coverage` must be in (0, 1], got coverage={coverage}")
    values = scores.detach().double().flatten().sort(descending=True).values
    total = values.sum().item()
    if values.numel() == 0 or total <= 0:
        return math.nan
    needed = int((values.cumsum(0) < coverage * total).sum().item()) + 1
    return min(needed, values.numel()) / values.numel()


def _locate(scores: Mapping[str, torch.Tensor]) -> list[tuple[str, str, int, str]]:
    """(name, block, stage, component) per score name. EfficientViT's stage is its own; a
    ViT's stage is the third of its depth the block lies in (0, 1, 2), so ViTs of different
    depths summarise alike (a multi-stage model's earlier ones, ``stages.{k}.blocks.{b}``, by the
    same thirds). ``block`` is the block's prefix (the container for depth)."""
    depth = max((len(v) for k, v in scores.items() if k == "blocks.depth"), default=0)
    rows = []
    for name in scores:
        comp = component(name)
        match = _BLOCK.match(name)
        block = match.group(1) if match else name.rsplit(".", 1)[0]
        stage_match = _STAGE.match(name)
        if stage_match and not depth:
            stage = int(stage_match.group(1))
        elif comp in ("depth", "width") or depth == 0:  # one group for the whole model
            stage = 0
        else:
            stage = min(3 * int(block.rsplit(".", 1)[1]) // depth, 2)
        rows.append((name, block, stage, comp))
    return rows


def summarize(
    scores: Mapping[str, torch.Tensor], *, coverages: Sequence[float] = COVERAGES
) -> dict[str, float]:
    """``imp_{component}_keep{90}_s{stage}``: the fraction of the component's groups in that
    stage (all its blocks pooled) needed to keep 90% (95%, ...) of its total importance.

    Components: heads, qk, v, ffn (every FFN of the stage pooled) and depth. ViT blocks are
    staged by thirds of depth; a ViT's depth is one stage (s0), EfficientViT's per stage.
    """
    pooled: dict[tuple[str, int], list[torch.Tensor]] = {}
    for name, _, stage, comp in _locate(scores):
        pooled.setdefault((comp, stage), []).append(scores[name].flatten())
    out = {}
    for (comp, stage), parts in sorted(pooled.items(), key=lambda kv: (
            COMPONENTS.index(kv[0][0]), kv[0][1])):
        values = torch.cat(parts)
        for cov in coverages:
            out[f"imp_{comp}_keep{round(cov * 100)}_s{stage}"] = keep_fraction(values, cov)
    return out


def retained_fractions(
    scores: Mapping[str, torch.Tensor], *, coverage: float = 0.9
) -> pd.DataFrame:
    """Per block and component (heads, qk, v, ffn), the fraction of its groups that keeps
    ``coverage`` of its importance: columns block (prefix, e.g. "blocks.3"), stage,
    component, retained; rows in forward order. All FFNs of a block are pooled; EfficientViT's
    downsample FFNs form a row of their own (block "stages.{s}.downsample")."""
    pooled: dict[tuple[str, int, str], list[torch.Tensor]] = {}
    for name, block, stage, comp in _locate(scores):
        if comp not in ("depth", "width"):  # not groups of one block
            pooled.setdefault((block, stage, comp), []).append(scores[name].flatten())
    rows = [{"block": block, "stage": stage, "component": comp,
             "retained": keep_fraction(torch.cat(parts), coverage)}
            for (block, stage, comp), parts in pooled.items()]
    return pd.DataFrame(rows, columns=["block", "stage", "component", "retained"])
