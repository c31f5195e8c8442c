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
                                      "depth": 2 / 3, "width": 1.0})


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
    (EVIT, {"num_heads": (1, 2), "kernels": (3, 3)}, "attn.v: efficientvit config keeps 16; "
     "the model has 8"),
    (EVIT, {"depths": (2, 3)}, "keeps 2; the model has 1"),
])
def test_a_candidate_beyond_the_parent_is_named(config, changes, words) -> None:
    parent = parent_of(config)
    why = misfit(parent, config.replace(**changes))
    assert why is not None and words in why, why
    with pytest.raises(InitError, match="not within the parent"):
        inherit(parent, config.replace(**changes), parent.zero_scores())


# ----------------------------------------------------------------- the residual stream's width
class KeptLayerNorm(torch.nn.Module):
    """A LayerNorm whose statistics are those of the kept channels (the others output 0)."""

    def __init__(self, norm: torch.nn.LayerNorm, kept: torch.Tensor) -> None:
        super().__init__()
        self.norm, self.kept = norm, kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kept
        out = torch.zeros_like(x)
        out[..., k] = torch.nn.functional.layer_norm(
            x[..., k], (len(k),), self.norm.weight[k], self.norm.bias[k], self.norm.eps)
        return out


def _mask_width(model: torch.nn.Module, kept: torch.Tensor,
                norms: bool = True) -> torch.nn.Module:
    """Zero every write to a dropped residual channel, and (``norms``) normalise over the
    kept ones."""
    dropped = sorted(set(range(model.patch_embed.proj.out_channels)) - set(kept.tolist()))
    with torch.no_grad():
        for p in (model.patch_embed.proj.weight, model.patch_embed.proj.bias):
            p[dropped] = 0
        model.cls_token[..., dropped] = 0
        model.pos_embed[..., dropped] = 0
        for block in (b for b in model.blocks if not isinstance(b, torch.nn.Identity)):
            writers = [block.attn.proj, block.mlp.fc2, *(f.mlp.fc2 for f in block.pre_ffns)]
            for lin in writers:
                lin.weight[dropped] = 0
                lin.bias[dropped] = 0
    for name, module in list(model.named_modules()):
        if norms and isinstance(module, torch.nn.LayerNorm):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], KeptLayerNorm(module, kept))
    return model


@pytest.mark.parametrize(("name", "changes"), [
    ("mhsa", {"embed_dim": 8, "qk_dim": 4, "v_dim": 4}),
    ("mhsa", {"embed_dim": 6, "num_heads": 2, "qk_dim": 2, "v_dim": 3, "mlp_ratio": 3.0,
              "depth": 2}),
    ("mhsa-sandwich", {"embed_dim": 9, "qk_dim": 5, "v_dim": 3, "mlp_ratio": 2.0}),
    ("mhsa-segments", {"embed_dim": 10, "qk_dim": (3, 2), "v_dim": (2, 2), "depth": 2}),
])
def test_a_narrower_residual_is_the_parent_masked_with_kept_channel_norms(name, changes):
    config = CONFIGS[name]
    parent = parent_of(config)
    candidate = config.replace(**changes)
    cut = inherit(parent, candidate, random_scores(parent.model, seed=2))
    assert len(cut.kept["residual.width"]) == candidate.embed_dim
    child = build(candidate)
    child.load_state_dict(cut.state_dict, strict=True)
    masked = _mask_width(_mask_vit(make(config), cut, config), cut.kept["residual.width"])
    x = images(config)
    plain = _mask_width(_mask_vit(make(config), cut, config), cut.kept["residual.width"],
                        norms=False)  # zeroed channels, but full-width LayerNorm statistics
    with torch.no_grad():
        expected, got, zeroed = masked(x), child(x), plain(x)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    assert (got - zeroed).abs().max().item() > 1e-3 * scale  # the norms are the whole gap


def test_one_layernorm_over_kept_channels_is_the_masked_one_restandardised():
    """The one place slicing the residual is not masking, in closed form: with the dropped
    channels zero, the full-width LayerNorm of the kept channels is an affine map of the
    kept-channel one (x - m) / s, so re-standardising it over the kept channels gives the
    cut model's LayerNorm exactly; the two differ by at most that affine map."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 12, generator=gen)
    kept = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    x[:, [i for i in range(12) if i not in kept.tolist()]] = 0
    full = torch.nn.functional.layer_norm(x, (12,), eps=0.0)[:, kept]
    cut = torch.nn.functional.layer_norm(x[:, kept], (len(kept),), eps=0.0)
    again = (full - full.mean(-1, keepdim=True)) / full.std(-1, unbiased=False, keepdim=True)
    assert torch.allclose(again, cut, atol=1e-5)
    ratio = len(kept) / 12  # full = a * cut + c with a = sqrt(...) per row: a bounded gap
    mean, var = x[:, kept].mean(-1, keepdim=True), x[:, kept].var(-1, unbiased=False,
                                                                      keepdim=True)
    a = torch.sqrt(var / (ratio * (var + mean ** 2) - (ratio * mean) ** 2))
    c = (1 - ratio) * mean / torch.sqrt(ratio * (var + mean ** 2) - (ratio * mean) ** 2)
    assert torch.allclose(full, a * cut + c, atol=1e-5)


# ------------------------------------------------- efficientvit: a stage's width (BatchNorm)
def _zero_bn(convbn: torch.nn.Module, channels) -> None:
    """A ConvBN (or BatchNorm) whose ``channels`` output 0 (eval mode: BN is affine)."""
    bn = convbn.bn if hasattr(convbn, "bn") else convbn
    bn.weight[list(channels)] = 0
    bn.bias[list(channels)] = 0


def _dropped(cut, name: str, n: int) -> list[int]:
    return sorted(set(range(n)) - set(cut.kept[name].tolist()))


def _mask_stage_widths(model: torch.nn.Module, cut) -> torch.nn.Module:
    """Zero every write to a dropped channel of each stage's residual stream (written by the
    stem or PatchMerging, every depthwise conv, FFN and attention output, each attention
    head's V into the next head's chunk), of the last head's V, of PatchMerging's hidden and
    squeeze-excite widths and of the stem's inner widths."""
    stages = list(model.stages)
    with torch.no_grad():
        for i in (1, 2, 3):
            conv = model.patch_embed.get_submodule(f"conv{i}")
            _zero_bn(conv, _dropped(cut, f"patch_embed.conv{i}.width", conv.conv.out_channels))
        for s, stage in enumerate(stages):
            blocks = [(b, k) for b, k in enumerate(stage.blocks)
                      if not isinstance(k, torch.nn.Identity)]  # the kept blocks
            attn0 = blocks[0][1].mixer.m.attn
            dropped = _dropped(cut, f"stages.{s}.width", attn0.num_heads * attn0.chunk)
            writers = [model.patch_embed.conv4] if s == 0 else [
                stage.downsample.patchmerge.conv3, stage.downsample.res2[0].m,
                stage.downsample.res2[1].m.pw2]
            if s + 1 < len(stages):
                res1 = stages[s + 1].downsample.res1
                writers += [res1[0].m, res1[1].m.pw2]
            else:
                writers.append(model.head.bn)
            for b, block in blocks:
                attn = block.mixer.m.attn
                writers += [attn.proj[1]] + [getattr(block, n).m.pw2 if n.startswith("ffn")
                                             else getattr(block, n).m
                                             for n, _ in block.named_children() if n != "mixer"]
                kd, cw = attn.key_dim, attn.chunk
                for c in dropped:  # head i-1's V is chunk i
                    if c >= cw:
                        _zero_bn(attn.qkvs[c // cw - 1], [2 * kd + c % cw])
                last = _dropped(cut, f"stages.{s}.blocks.{b}.attn.v", attn.value_dim)
                _zero_bn(attn.qkvs[-1], [2 * kd + j for j in last])
            for writer in writers:
                _zero_bn(writer, dropped)
            if s:
                merge = stage.downsample.patchmerge
                hidden = _dropped(cut, f"stages.{s}.downsample.merge.width",
                                  merge.conv1.conv.out_channels)
                _zero_bn(merge.conv1, hidden)
                _zero_bn(merge.conv2, hidden)
                reduced = _dropped(cut, f"stages.{s}.downsample.se.width",
                                   merge.se.fc1.out_channels)
                merge.se.fc1.weight[reduced] = 0
                merge.se.fc1.bias[reduced] = 0
    return model


@pytest.mark.parametrize(("name", "changes"), [
    ("efficientvit", {"embed_dims": (8, 16)}),
    ("efficientvit", {"embed_dims": (16, 12), "key_dim": 2, "depths": (1, 2)}),
    ("efficientvit-sandwich0", {"embed_dims": (8, 8), "ffn_ratio": 1.5}),
    ("efficientvit", {"embed_dims": (8, 20), "key_dim": (3, 1), "ffn_ratio": (1.0, 2.0)}),
])
def test_a_narrower_stage_is_the_parent_masked_exactly(name, changes):
    config = CONFIGS[name]
    parent = parent_of(config)
    candidate = config.replace(**changes)
    assert misfit(parent, candidate) is None
    cut = inherit(parent, candidate, random_scores(parent.model, seed=4))
    for s, width in enumerate(candidate.embed_dims):
        assert len(cut.kept[f"stages.{s}.width"]) == width
    child = build(candidate)
    child.load_state_dict(cut.state_dict, strict=True)
    masked = _mask_stage_widths(_mask_efficientvit(make(config), cut, config), cut)
    x = images(config)
    with torch.no_grad():
        expected, got, original = masked(x), child(x), parent.model(x)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-5 * scale  # BatchNorm: exact
    assert (original - expected).abs().max().item() > 1e-3 * scale
    assert 0 < cut.keep["width"] < 1


def test_a_stage_whose_v_is_narrower_than_its_chunk_keeps_its_width():
    config = CONFIGS["efficientvit-sandwich2"]  # v_ratio 0.5
    structure = search_spaces.get(config.KIND).structure(config)
    assert "width" not in structure.prunable() and "width" in structure.unprunable()
    assert "width" in search_spaces.get(EVIT.KIND).structure(EVIT).prunable()
    why = misfit(parent_of(config), config.replace(embed_dims=(8, 24)))
    assert why is not None
