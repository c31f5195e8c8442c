"""Inheritance: a parent cut to any candidate within it loads strictly and computes the
masked parent (both families, both attention kinds, sandwich blocks, every token policy);
a candidate beyond it is told, naming what does not fit."""

from __future__ import annotations

import pytest
import torch
from test_pruning import (
    CASCADE,
    CONFIGS,
    EVIT,
    VIT,
    _mask_efficientvit,
    _mask_vit,
    images,
    make,
    random_scores,
)

import search_spaces
from search_spaces.vit import ViTConfig
from trainers.inherit import Parent, base_config, inherit, misfit
from trainers.warmstart import InitError, warm_start_from

INPUTS = {"num_classes": 4, "in_chans": 1, "img_size": 8}


def parent_of(config) -> Parent:
    space = search_spaces.get(config.KIND)
    return Parent(space=space, config=config, model=make(config),
                  inputs={**INPUTS, "img_size": config.img_size})


def build(config) -> torch.nn.Module:
    return search_spaces.get(config.KIND).build(config, num_classes=4, in_chans=1).eval()


# (parent, the candidate's changes): every kind of cut, several at once
CUTS = [
    ("mhsa", {"num_heads": 2, "qk_dim": 2, "v_dim": 3, "mlp_ratio": 2.0, "depth": 2}),
    ("mhsa", {"num_heads": 1, "qk_dim": 4, "v_dim": 4}),  # one head, widths spelled out
    ("mhsa-sandwich", {"qk_dim": 3, "v_dim": 1, "mlp_ratio": 1.0, "depth": 1}),
    ("cga", {"qk_dim": 2, "mlp_ratio": 1.5, "depth": 2}),
    # per-segment widths: the kept blocks take the widths of their place in the new depth
    ("mhsa", {"qk_dim": (4, 2), "v_dim": (1, 4), "mlp_ratio": (4.0, 1.0), "depth": 2}),
    ("cga-sandwich", {"qk_dim": (6, 2, 1), "mlp_ratio": (4.0, 2.0, 1.0)}),
    ("mhsa-segments", {"qk_dim": (2, 3), "v_dim": (2, 1), "depth": 2}),
    ("cga-sandwich", {"qk_dim": 1, "depth": 2}),
    ("efficientvit", {"key_dim": 2, "depths": (1, 2), "ffn_ratio": 1.0}),
    ("efficientvit-sandwich2", {"key_dim": 1, "depths": (1, 1), "ffn_ratio": 1.5}),
    ("efficientvit", {"key_dim": (4, 1), "ffn_ratio": (1.0, 2.0), "depths": (1, 2)}),
    ("efficientvit-stages", {"key_dim": (2, 3), "ffn_ratio": (2.0, 1.0)}),
]


@pytest.mark.parametrize(("name", "changes"), CUTS)
def test_a_cut_parent_computes_the_masked_parent(name: str, changes: dict) -> None:
    config = CONFIGS[name]
    parent = parent_of(config)
    candidate = config.replace(**changes)
    assert misfit(parent, candidate) is None
    cut = inherit(parent, candidate, random_scores(parent.model, seed=5))
    child = build(candidate)  # the base's model: the candidate's (a per-stage tuple may
    # spell a shared value out: (1.0, 1.0) for 1.0)
    child.load_state_dict(cut.state_dict, strict=True)
    mask = _mask_vit if isinstance(config, ViTConfig) else _mask_efficientvit
    masked = mask(make(config), cut, config)
    x = images(config)
    with torch.no_grad():
        expected, got, original = masked(x), child(x), parent.model(x)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    assert (original - expected).abs().max().item() > 1e-3 * scale
    assert all(0 < share <= 1 for share in cut.keep.values())


def test_kept_shares_count_groups_of_each_kind() -> None:
    parent = parent_of(VIT)  # 3 blocks of 3 heads x 4 channels, FFN 48
    cut = inherit(parent, VIT.replace(num_heads=2, qk_dim=2, v_dim=4, mlp_ratio=1.0, depth=2),
                  random_scores(parent.model))
    assert cut.keep == pytest.approx({"heads": 2 / 3, "qk": 0.5, "v": 1.0, "ffn": 0.25,
                                      "depth": 2 / 3})


@pytest.mark.parametrize("policy", ["halting", "gating", "cascade"])
def test_adaptive_candidates_inherit_their_static_base(policy: str) -> None:
    parent = parent_of(CASCADE.replace(token_policy="static") if policy == "cascade" else VIT)
    fam = parent.space
    candidate = parent.config.replace(token_policy=policy, qk_dim=2, mlp_ratio=2.0, depth=2)
    base = base_config(parent, candidate)
    assert base.token_policy == "static" and (base.qk_dim, base.depth) == (2, 2)
    cut = inherit(parent, candidate, random_scores(parent.model, seed=1))
    child = build(candidate)
    fresh = warm_start_from(child, cut.state_dict, adaptive=fam.adaptive(candidate))
    assert all(fam.adaptive(candidate).is_added(n) for n in fresh)
    if policy != "cascade":  # the candidate's weights without its policy: the cut base
        static = build(base)
        static.load_state_dict(cut.state_dict, strict=True)
        x = images(parent.config)
        with torch.no_grad():
            assert torch.allclose(child.forward_full(x), static(x), atol=1e-6)


@pytest.mark.parametrize(("config", "changes", "words"), [
    (VIT, {"depth": 4}, "blocks.depth: vit config keeps 4; the model has 3"),
    (VIT, {"num_heads": 4}, "keeps 4; the model has 3"),
    (VIT, {"qk_dim": 5}, "keeps 5 per head; the model has 4 per head"),
    (VIT, {"patch_size": 2}, "tensor 'pos_embed' is (1, 17, 12) in the candidate"),
    (VIT, {"attn": "cga"}, "has no counterpart in the parent"),
    (EVIT, {"num_heads": (1, 2), "kernels": (3, 3)}, "in the candidate; slicing the parent"),
    (EVIT, {"depths": (2, 3)}, "keeps 2; the model has 1"),
])
def test_a_candidate_beyond_the_parent_is_named(config, changes, words) -> None:
    parent = parent_of(config)
    why = misfit(parent, config.replace(**changes))
    assert why is not None and words in why, why
    with pytest.raises(InitError, match="not within the parent"):
        inherit(parent, config.replace(**changes), parent.zero_scores())
