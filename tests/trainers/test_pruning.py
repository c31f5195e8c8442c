"""Structured pruning: exact reproduction at keep 1, pruned == masked original, valid configs
that build and load strictly, MACs as predicted, and a trained model keeps what matters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import search_spaces
from search_spaces.config import ConfigError
from search_spaces.efficientvit import EfficientViTConfig
from search_spaces.vit import ViTConfig
from search_spaces.vit.structure import exact_ratio
from trainers.data import load_data
from trainers.groups import group_layout
from trainers.importance import taylor_importance
from trainers.loop import FitSettings, evaluate, fit
from trainers.measure import count_macs
from trainers.pruning import (
    build_pruned,
    finetune,
    keep_ratios,
    prunable,
    prune,
    prune_to_macs,
    pruned_config,
)

VIT = ViTConfig(img_size=8, patch_size=4, embed_dim=12, depth=3, num_heads=3)
EVIT = EfficientViTConfig(img_size=32, stem_stride=8, embed_dims=(16, 24), depths=(1, 3),
                          num_heads=(2, 2), key_dim=4, kernels=(3, 3), window_size=2)
CONFIGS = {
    "mhsa": VIT,
    "mhsa-sandwich": VIT.replace(sandwich=1, qk_dim=5, v_dim=3),
    "cga": VIT.replace(attn="cga"),
    "cga-sandwich": VIT.replace(attn="cga", sandwich=1, qk_dim=6),
    "mhsa-segments": VIT.replace(qk_dim=(4, 3), v_dim=(2, 4), mlp_ratio=(4.0, 2.0)),
    "cga-segments": VIT.replace(attn="cga", qk_dim=(3, 5), mlp_ratio=(2.0, 3.0)),
    "efficientvit": EVIT,
    "efficientvit-sandwich0": EVIT.replace(sandwich=0),
    "efficientvit-stages": EVIT.replace(key_dim=(4, 3), ffn_ratio=(2.0, 3.0), v_ratio=(1.0, 0.5)),
    "efficientvit-sandwich2": EVIT.replace(sandwich=2, v_ratio=0.5),
}


def make(config, seed: int = 0) -> nn.Module:
    """Parameters and BN statistics moved off their init, eval mode. BN weights ~ 1 (not the
    zero init of residual branches): otherwise attention barely reaches the logits and a
    mis-scaled Q/K would go unnoticed."""
    torch.manual_seed(seed)
    model = search_spaces.get(config.KIND).build(config, num_classes=4, in_chans=1)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
            elif name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
    return model.eval()


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(g.size, generator=gen, dtype=torch.float64)
            for n, g in group_layout(model).items()}


def images(config, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, config.img_size, config.img_size,
                       generator=torch.Generator().manual_seed(7))


def rebuild(pruned) -> nn.Module:
    return build_pruned(pruned, num_classes=4, in_chans=1).eval()


# ------------------------------------------------------------------------- keep 1 is exact
@pytest.mark.parametrize("name", list(CONFIGS))
def test_keep_one_reproduces_the_logits(name: str) -> None:
    config = CONFIGS[name]
    model = make(config)
    keep = {"depth": 1.0, "qk": 1.0, "ffn": 1.0} if name.startswith("eff") else 1.0
    pruned = prune(config, model, random_scores(model), keep)
    assert pruned.config == config
    x = images(config)
    with torch.no_grad():
        expected, got = model(x), rebuild(pruned)(x)
    assert expected.std() > 0.02  # not a comparison of near-constant outputs
    assert (got - expected).abs().max().item() <= 1e-5


# --------------------------------------------------------------- pruned == masked original
def _mask_vit(model: nn.Module, pruned, config: ViTConfig, prefix: str = "") -> nn.Module:
    """Zero what pruning drops (with the ORIGINAL attention scale) and replace dropped blocks
    by identities: the function the pruned model must compute. ``prefix``: where ``model``
    sits in the pruned one (a cascade's earlier stage)."""
    h = config.num_heads
    with torch.no_grad():
        for b, block in enumerate(model.blocks):
            widths = config.block(b)  # per segment of depth, or the same for every block
            qk = widths["qk_dim"] or config.embed_dim // config.num_heads
            v = widths["v_dim"] or config.embed_dim // config.num_heads
            kept = {c: set(pruned.kept[f"{prefix}blocks.{b}.attn.{c}"].tolist())
                    for c in ("heads", "qk", "v")}
            if config.attn == "mhsa":
                for j in set(range(h * qk)) - kept["qk"]:
                    for p in (block.attn.qkv.weight, block.attn.qkv.bias):
                        p[j] = 0
                        p[h * qk + j] = 0
                for j in set(range(h * v)) - kept["v"]:
                    block.attn.proj.weight[:, j] = 0
                for i in set(range(h)) - kept["heads"]:
                    block.attn.proj.weight[:, i * v:(i + 1) * v] = 0
            else:
                for j in set(range(h * qk)) - kept["qk"]:
                    lin = block.attn.qkvs[j // qk]
                    for p in (lin.weight, lin.bias):
                        p[j % qk] = 0
                        p[qk + j % qk] = 0
            mlps = [(f"{prefix}blocks.{b}.mlp", block.mlp)] + [
                (f"{prefix}blocks.{b}.pre_ffns.{k}", f.mlp) for k, f in enumerate(block.pre_ffns)]
            for name, mlp in mlps:
                dropped = set(range(mlp.fc1.out_features)) - set(
                    pruned.kept[f"{name}.hidden"].tolist())
                mlp.fc2.weight[:, sorted(dropped)] = 0
    for b in set(range(config.depth)) - set(pruned.kept[f"{prefix}blocks.depth"].tolist()):
        model.blocks[b] = nn.Identity()
    return model


def _mask_efficientvit(model: nn.Module, pruned, config: EfficientViTConfig) -> nn.Module:
    with torch.no_grad():
        for s, stage in enumerate(model.stages):
            kd = config.stage(s)["key_dim"]
            for b, block in enumerate(stage.blocks):
                p = f"stages.{s}.blocks.{b}"
                attn = block.mixer.m.attn
                for j in set(range(attn.num_heads * kd)) - set(
                        pruned.kept[f"{p}.attn.qk"].tolist()):
                    attn.dws[j // kd].bn.weight[j % kd] = 0  # the filtered q channel is 0
                    attn.dws[j // kd].bn.bias[j % kd] = 0
                for name, child in block.named_children():
                    if name.startswith("ffn"):
                        _zero_hidden(child.m, pruned.kept[f"{p}.{name}.hidden"])
            if s:
                for pair in ("res1", "res2"):
                    _zero_hidden(stage.downsample.get_submodule(pair)[1].m,
                                 pruned.kept[f"stages.{s}.downsample.{pair}.hidden"])
            kept = set(pruned.kept[f"stages.{s}.blocks.depth"].tolist())
            for b in set(range(len(stage.blocks))) - kept:
                stage.blocks[b] = nn.Identity()
    return model


def _zero_hidden(ffn: nn.Module, kept: torch.Tensor) -> None:
    dropped = sorted(set(range(ffn.pw1.conv.out_channels)) - set(kept.tolist()))
    ffn.pw2.conv.weight[:, dropped] = 0


@pytest.mark.parametrize(("name", "keep"), [
    ("mhsa", {"heads": 0.67, "qk": 0.5, "v": 0.75, "ffn": 0.3, "depth": 0.67}),
    ("mhsa-sandwich", {"heads": 0.34, "qk": 0.4, "v": 0.67, "ffn": 0.5}),
    ("mhsa-segments", {"heads": 0.67, "qk": 0.5, "v": 0.5, "ffn": 0.5, "depth": 0.67}),
    ("cga-segments", {"qk": 0.67, "ffn": 0.5}),
    ("cga", {"qk": 0.5, "ffn": 0.25, "depth": 0.34}),
    ("cga-sandwich", {"qk": 0.34, "ffn": 0.6}),
    ("efficientvit", {"qk": 0.5, "ffn": 0.4, "depth": 0.67}),
    ("efficientvit", {"qk": 0.25}),
    ("efficientvit-stages", {"qk": 0.5, "ffn": 0.5, "depth": 0.67}),
    ("cga", {"qk": 0.34}),
    ("efficientvit-sandwich2", {"qk": 0.25, "ffn": 0.7}),
])
def test_pruned_model_computes_the_masked_original(name: str, keep: dict) -> None:
    config = CONFIGS[name]
    model = make(config)
    pruned = prune(config, model, random_scores(model, seed=3), keep)
    assert pruned.config != config
    mask = _mask_vit if isinstance(config, ViTConfig) else _mask_efficientvit
    masked = mask(make(config), pruned, config)
    x = images(config)
    with torch.no_grad():
        expected, got, original = masked(x), rebuild(pruned)(x), model(x)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    assert (original - expected).abs().max().item() > 1e-3 * scale  # pruning changed things


CASCADE = VIT.replace(img_size=16, token_policy="cascade", sandwich=1)  # grids 2, 3, 4


@pytest.mark.parametrize(("reuse", "keep"), [
    ((True, True), {"qk": 0.5, "v": 0.67, "ffn": 0.3}),
    ((True, False), {"heads": 0.67, "qk": 0.5, "ffn": 0.5}),
    ((False, True), 0.5),
])
def test_a_pruned_cascade_computes_its_masked_original(reuse, keep) -> None:
    config = CASCADE.replace(cascade_feature_reuse=reuse[0], cascade_relation_reuse=reuse[1])
    model = make(config)
    pruned = prune(config, model, random_scores(model, seed=3), keep)
    assert (pruned.config.cascade_scales, pruned.config.cascade_relation_reuse) == (
        config.cascade_scales, config.cascade_relation_reuse)
    masked = make(config)  # every stage masked by its own kept groups
    for k, stage in enumerate(masked.stages):
        _mask_vit(stage, pruned, config, prefix=f"stages.{k}.")
    _mask_vit(masked, pruned, config)
    x = images(config)
    with torch.no_grad():  # every stage's logits: the exits see the same confidences
        expected, got, original = (torch.cat(m.forward_stages(x), -1)
                                   for m in (masked, rebuild(pruned), model))
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    assert (original - expected).abs().max().item() > 1e-3 * scale


def test_relationship_reuse_keeps_heads_and_depth_whole() -> None:
    config = CASCADE
    assert prunable(config) == ("qk", "v", "ffn")
    with pytest.raises(ValueError, match="heads cannot be pruned.*relationship reuse"):
        keep_ratios(config, {"heads": 0.5})
    plain = config.replace(cascade_relation_reuse=False)
    model = make(plain)
    pruned = prune(plain, model, random_scores(model), {"depth": 0.67, "heads": 0.67})
    assert (pruned.config.depth, pruned.config.num_heads) == (2, 2)
    rebuild(pruned)  # every stage loses its own blocks and heads: the state loads strictly


def test_pruned_vit_widths_and_kept_ids() -> None:
    config = CONFIGS["mhsa"]
    model = make(config)
    scores = random_scores(model)
    scores["blocks.1.attn.qk"] = torch.tensor([0, 1, 2, 3, 9, 8, 7, 6, 5, 5, 9, 5.0])
    scores["blocks.0.mlp.hidden"] = torch.arange(48.0)
    pruned = prune(config, model, scores, {"heads": 0.67, "qk": 0.5, "v": 0.75, "ffn": 0.25})
    new = pruned.config
    assert (new.num_heads, new.qk_dim, new.v_dim, new.depth) == (2, 2, 3, 3)
    assert int(new.embed_dim * new.mlp_ratio) == 12
    # per head the two best Q/K channels: different indices in different heads
    assert pruned.kept["blocks.1.attn.qk"].tolist() == [2, 3, 4, 5, 10, 11]
    assert pruned.kept["blocks.0.mlp.hidden"].tolist() == list(range(36, 48))
    assert pruned.kept["blocks.0.attn.heads"].numel() == 2
    state = pruned.state_dict
    assert state["blocks.1.attn.qkv.weight"].shape == (2 * (2 + 2 + 3), 12)
    assert state["blocks.1.attn.proj.weight"].shape == (12, 6)
    assert state["blocks.2.mlp.fc1.weight"].shape == (12, 12)


# --------------------------------------------------------------------------------- configs
def test_exact_ratio_gives_the_hidden_width_where_division_does_not() -> None:
    misses = [(d, k) for d in range(1, 97) for k in range(1, 4 * d) if int(d * (k / d)) != k]
    assert misses  # plain k / d is not enough
    assert all(int(d * exact_ratio(d, k)) == k for d in range(1, 97) for k in range(1, 4 * d))
    dim, hidden = misses[0]
    config = ViTConfig(img_size=8, patch_size=4, embed_dim=dim, depth=1, num_heads=1,
                       mlp_ratio=exact_ratio(dim, hidden))
    config = ViTConfig.from_json(config.to_json())
    model = search_spaces.get("vit").build(config, num_classes=2, in_chans=1)
    assert model.blocks[0].mlp.fc1.out_features == hidden


def test_head_pruned_mhsa_configs_need_not_divide_the_width() -> None:
    config = ViTConfig(embed_dim=12, num_heads=5, qk_dim=2, v_dim=3, img_size=8, patch_size=4)
    model = search_spaces.get("vit").build(config, num_classes=2, in_chans=1)
    assert model.blocks[0].attn.qkv.out_features == 5 * 7
    for changes in ({"v_dim": None}, {"attn": "cga", "v_dim": None}):
        with pytest.raises(ConfigError, match="must divide `embed_dim`"):
            config.replace(**changes)


def test_keep_ratios_name_what_cannot_be_pruned() -> None:
    assert keep_ratios(VIT, 0.5) == {"qk": 0.5, "v": 0.5, "ffn": 0.5}  # heads only by name
    assert keep_ratios(EVIT, 0.5) == {"qk": 0.5, "ffn": 0.5}
    assert keep_ratios(EVIT, {"width": 0.5}) == {"width": 0.5}  # V as wide as its chunk
    assert pruned_config(EVIT, {"width": 0.5}).embed_dims == (8, 12)
    assert keep_ratios(CONFIGS["cga"], {"heads": 1.0, "depth": 0.5}) == {"depth": 0.5}
    for config, keep, words in [
        (CONFIGS["cga"], {"heads": 0.5}, "reads one input chunk per head"),
        (EVIT, {"v": 0.5}, "adds each head's V output"),
        (VIT, {"embed": 0.5}, "unknown component"),
        (CONFIGS["cga"], {"width": 0.5}, "splits the residual stream"),
        (VIT.replace(token_policy="halting"), {"width": 0.5}, "policy's own parts read"),
        (CONFIGS["efficientvit-sandwich2"], {"width": 0.5}, "narrower than its chunk"),
        (VIT, {"ffn": 0.0}, "must be in (0, 1]"),
        (VIT, 1.5, "must be in (0, 1]"),
    ]:
        with pytest.raises(ValueError) as err:
            keep_ratios(config, keep)
        assert words in str(err.value)


def test_pruned_efficientvit_config_is_uniform_per_field() -> None:
    new = pruned_config(EVIT, {"qk": 0.5, "ffn": 0.5, "depth": 0.5})
    assert (new.key_dim, new.ffn_ratio, new.depths) == (2, 1.0, (1, 2))
    assert pruned_config(EVIT, {"ffn": 0.01}).ffn_ratio == 1 / 16  # one channel at width 16
    assert EfficientViTConfig.from_dict(new.to_dict()) == new


def test_scores_of_another_model_are_rejected() -> None:
    model = make(VIT)
    scores = random_scores(make(CONFIGS["mhsa-sandwich"]))
    with pytest.raises(ValueError, match="computed on this model"):
        prune(VIT, model, scores, 0.5)


# ----------------------------------------------------------------------------- MAC budgets
@pytest.mark.parametrize("name", ["mhsa-sandwich", "cga", "efficientvit"])
def test_prune_to_macs_meets_the_budget_with_measured_macs(name: str) -> None:
    config = CONFIGS[name]
    if isinstance(config, EfficientViTConfig):
        config = config.replace(depths=(1, 1))  # tracing costs ~0.1 s per block
    model = make(config)
    shape = (1, config.img_size, config.img_size)
    original = count_macs(model, shape)
    pruned = prune_to_macs(config, model, random_scores(model), input_shape=shape,
                           num_classes=4, fraction=0.6, steps=8)
    built = rebuild(pruned)
    assert count_macs(built, shape) == pruned.macs  # the prediction is what runs
    assert pruned.macs <= 0.6 * original < original
    assert 0 < min(pruned.keep.values()) < 1
    looser = prune_to_macs(config, model, random_scores(model), input_shape=shape,
                           num_classes=4, fraction=0.9, steps=6)
    assert pruned.macs < looser.macs <= 0.9 * original


def test_prune_to_macs_edge_targets() -> None:
    model = make(VIT)
    shape = (1, 8, 8)
    original = count_macs(model, shape)
    whole = prune_to_macs(VIT, model, random_scores(model), input_shape=shape, num_classes=4,
                          target_macs=original)
    assert whole.config == VIT and whole.macs == original
    with pytest.raises(ValueError, match="below the"):
        prune_to_macs(VIT, model, random_scores(model), input_shape=shape, num_classes=4,
                      target_macs=100)
    with pytest.raises(ValueError, match="exactly one"):
        prune_to_macs(VIT, model, random_scores(model), input_shape=shape, num_classes=4)


# ------------------------------------------------------------ trained model, IO, fine-tune
@pytest.fixture(scope="module")
def trained():
    data = load_data("synthetic", train_size=512, val_size=128, img_size=16)
    torch.manual_seed(3)
    config = ViTConfig(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2,
                       mlp_ratio=2.0)
    model = search_spaces.get("vit").build(config, num_classes=10, in_chans=3)
    fit(model, data, FitSettings(epochs=6, batch_size=32, lr=3e-3, warmup_epochs=0.5, seed=3))
    scores = taylor_importance(model, data.train_batches(64, epoch=0, seed=0), num_batches=4)
    return data, config, model, scores


def test_keeping_the_top_channels_costs_less_loss_than_keeping_the_bottom(trained) -> None:
    data, config, model, scores = trained
    base = evaluate(model, data.val_batches(128))["loss"]
    assert base < 2.0  # it learned something (chance: ln 10 = 2.30)
    keep = {"ffn": 0.25, "qk": 0.5, "v": 0.5}
    losses = {}
    for label, s in (("top", scores), ("bottom", {k: -v for k, v in scores.items()})):
        pruned = prune(config, model, s, keep)
        net = build_pruned(pruned, num_classes=10, in_chans=3)
        losses[label] = evaluate(net, data.val_batches(128))["loss"]
    assert losses["bottom"] - base > 2 * (losses["top"] - base)


def rebuild_eval(pruned) -> nn.Module:
    return build_pruned(pruned, num_classes=10, in_chans=3).eval()


def test_finetune_trains_the_pruned_model_with_fit(trained) -> None:
    data, config, model, scores = trained
    pruned = prune(config, model, scores, {"ffn": 0.25, "qk": 0.5})
    before = evaluate(rebuild_eval(pruned), data.val_batches(128))["loss"]
    net, result = finetune(pruned, data, FitSettings(epochs=2, batch_size=32, lr=1e-3,
                                                     warmup_epochs=0.5))
    assert len(result.history) == 2 and net.blocks[0].mlp.fc1.out_features == 12
    assert math.isfinite(result.final["val_loss"]) and result.final["val_loss"] < before
