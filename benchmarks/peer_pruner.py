"""A peer's structured pruner on a ViT of this project: Torch-Pruning (Fang et al., CVPR'23,
PyPI ``torch-pruning``; not a dependency of the project: ``pip install torch-pruning==1.6.1``
beside it to run the comparison).

Its documented recipe for timm ViTs: ``MetaPruner`` with Taylor importance over the coupled
groups its dependency graph finds (the residual width through patch embedding, class token,
position embedding, every norm and projection; each head's Q/K/V rows; the MLP hidden
units), one uniform ratio for every group, head dims pruned and head count kept, the
classifier's outputs left alone. Its graph maps indices through ``reshape``/``unbind`` but
not through a ``split`` behind a 3-d parameter, so while it traces, the attention splits
Q/K/V the timm way (the same values for equal Q/K and V widths, which the recipe needs).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.layers.attention import MultiHeadAttention
from trainers.measure import count_macs


def _timm_split(self: MultiHeadAttention, x: torch.Tensor):
    b, n, _ = x.shape
    return self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _prune(model: nn.Module, batches: list, ratio: float) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).train()
    attention = [m for m in pruned.modules() if isinstance(m, MultiHeadAttention)]
    if any(a.qk_dim != a.v_dim for a in attention):
        raise ValueError("the timm recipe needs equal Q/K and V widths per head")
    own = MultiHeadAttention.split_heads
    MultiHeadAttention.split_heads = _timm_split
    try:
        example = batches[0][0][:2]
        pruner = tp.pruner.MetaPruner(
            pruned, example, importance=tp.importance.GroupTaylorImportance(),
            pruning_ratio=ratio, num_heads={a.qkv: a.num_heads for a in attention},
            prune_head_dims=True, prune_num_heads=False, ignored_layers=[pruned.head],
            unwrapped_parameters=[(pruned.cls_token, 2), (pruned.pos_embed, 2)])
        pruned.zero_grad()
        for x, y in batches:  # Taylor importance: gradients of the training loss
            F.cross_entropy(pruned(x), y).backward()
        pruner.step()
    finally:
        MultiHeadAttention.split_heads = own
    for a in attention:
        a.num_heads = pruner.num_heads[a.qkv]
        a.qk_dim = a.v_dim = a.qkv.out_features // (3 * a.num_heads)
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def torch_pruning_to(model: nn.Module, batches: Iterable, share: float,
                     input_shape: tuple[int, ...], steps: int = 10) -> tuple[nn.Module, float]:
    """``model`` pruned by Torch-Pruning with the largest uniform ratio whose MACs are at most
    ``share`` of the model's (bisection over the ratio); the pruned model and its MACs share.
    ``batches``: the (images, labels) training batches its Taylor importance sums over."""
    batches = list(batches)
    full = count_macs(model, input_shape)
    lo, hi = 0.0, 0.95  # ratio: lo fits (none pruned: not unless share >= 1), hi is too much
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = _prune(model, batches, mid)
        macs = count_macs(candidate, input_shape) / full
        if macs <= share:
            hi, best = mid, (candidate, macs)
        else:
            lo = mid
    if best is None:
        raise ValueError(f"Torch-Pruning cannot reach {share:.0%} of the MACs")
    return best
