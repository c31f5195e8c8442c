"""Taylor importance: group scores against hand-computed weight x gradient sums, the group
bookkeeping, accumulation over batches, and the summaries."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
from search_spaces.efficientvit import EfficientViTConfig
from search_spaces.output import ModelOutput
from search_spaces.vit import VisionTransformer, ViTConfig
from trainers.groups import component, group_layout
from trainers.importance import (
    keep_fraction,
    load_scores,
    retained_fractions,
    save_scores,
    scores_from_grads,
    summarize,
    taylor_importance,
)

TINY = ViTConfig(img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=2)
EVIT = EfficientViTConfig(img_size=32, stem_stride=8, embed_dims=(16, 24), depths=(1, 2),
                          num_heads=(2, 2), key_dim=4, kernels=(3, 3), window_size=2)
CONFIGS = {
    "mhsa": TINY,
    "mhsa-sandwich": TINY.replace(sandwich=1, qk_dim=3, v_dim=5),
    "cga": TINY.replace(attn="cga", qk_dim=4),
    "cga-sandwich": TINY.replace(attn="cga", sandwich=1),
    "efficientvit": EVIT,
    "efficientvit-sandwich2": EVIT.replace(sandwich=2, v_ratio=0.5),
    "cascade": TINY.replace(img_size=16, sandwich=1, token_policy="cascade"),  # 3 stages
}


def make(config, seed: int = 0) -> nn.Module:
    """A model whose parameters and BN statistics are all off their init (zero-init BNs
    would zero most gradients)."""
    torch.manual_seed(seed)
    model = search_spaces.get(config.KIND).build(config, num_classes=3, in_chans=1)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
            elif name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
    return model


def batch(config, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, config.img_size, config.img_size, generator=gen)
    return x, torch.randint(0, 3, (n,), generator=gen)


def backward(model: nn.Module, config) -> None:
    x, y = batch(config)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def wg(p: nn.Parameter) -> torch.Tensor:
    return p.detach().double() * p.grad.double()


def rows(p: nn.Parameter) -> torch.Tensor:
    """sum of w * g per output row (all other axes summed)."""
    prod = wg(p)
    return prod.flatten(1).sum(1) if prod.dim() > 1 else prod


def close(got: torch.Tensor, expected: list[float] | torch.Tensor) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert expected.abs().max() > 0  # a comparison of zeros proves nothing
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-18)


# ------------------------------------------------------------------ hand-computed scores
def test_vit_mhsa_scores_are_squared_weight_times_grad_sums() -> None:
    config = TINY.replace(sandwich=1)
    model = make(config).eval()
    backward(model, config)
    scores = scores_from_grads(model)
    h, d = 2, 6  # heads, per-head width (12 / 2)
    for b, block in enumerate(model.blocks):
        qkv = rows(block.attn.qkv.weight) + wg(block.attn.qkv.bias)  # 36 rows: q | k | v
        proj = wg(block.attn.proj.weight).sum(0)  # 12 input columns
        heads = [(qkv[i * d:(i + 1) * d].sum() + qkv[12 + i * d:12 + (i + 1) * d].sum()
                  + qkv[24 + i * d:24 + (i + 1) * d].sum() + proj[i * d:(i + 1) * d].sum()) ** 2
                 for i in range(h)]
        close(scores[f"blocks.{b}.attn.heads"], heads)
        close(scores[f"blocks.{b}.attn.qk"], [(qkv[j] + qkv[12 + j]) ** 2 for j in range(12)])
        close(scores[f"blocks.{b}.attn.v"], [(qkv[24 + j] + proj[j]) ** 2 for j in range(12)])
        for name, mlp in ((f"blocks.{b}.mlp", block.mlp),
                          (f"blocks.{b}.pre_ffns.0", block.pre_ffns[0].mlp)):
            fc1 = rows(mlp.fc1.weight) + wg(mlp.fc1.bias)
            fc2 = wg(mlp.fc2.weight).sum(0)
            close(scores[f"{name}.hidden"], (fc1 + fc2) ** 2)
    depth = [sum(wg(p).sum() for n, p in model.named_parameters() if n.startswith(f"blocks.{b}."))
             ** 2 for b in range(2)]
    close(scores["blocks.depth"], depth)


def test_vit_cga_scores_follow_each_heads_own_projection() -> None:
    config = TINY.replace(attn="cga", qk_dim=4)
    model = make(config).eval()
    backward(model, config)
    scores = scores_from_grads(model)
    attn = model.blocks[1].attn
    proj = wg(attn.proj.weight).sum(0)
    heads, qk, v = [], [], []
    for i, lin in enumerate(attn.qkvs):  # rows: q (4) | k (4) | v (6)
        r = rows(lin.weight) + wg(lin.bias)
        heads.append((r.sum() + proj[6 * i:6 * (i + 1)].sum()) ** 2)
        qk += [(r[c] + r[4 + c]) ** 2 for c in range(4)]
        v += [(r[8 + c] + proj[6 * i + c]) ** 2 for c in range(6)]
    close(scores["blocks.1.attn.heads"], heads)
    close(scores["blocks.1.attn.qk"], qk)
    close(scores["blocks.1.attn.v"], v)


def bn_rows(convbn: nn.Module) -> torch.Tensor:
    return rows(convbn.conv.weight) + wg(convbn.bn.weight) + wg(convbn.bn.bias)


def test_efficientvit_qk_groups_own_the_query_depthwise_filter_and_bn() -> None:
    model = make(EVIT).eval()
    backward(model, EVIT)
    scores = scores_from_grads(model)
    block = model.stages[1].blocks[1]
    attn = block.mixer.m.attn
    kd, vd = 4, 12
    proj = wg(attn.proj[1].conv.weight).flatten(2).sum((0, 2))
    heads, qk, v = [], [], []
    for i in range(2):
        r, dw = bn_rows(attn.qkvs[i]), bn_rows(attn.dws[i])
        bias = wg(attn.attention_biases)[i].sum()
        heads.append((r.sum() + dw.sum() + bias + proj[vd * i:vd * (i + 1)].sum()) ** 2)
        qk += [(r[c] + r[kd + c] + dw[c]) ** 2 for c in range(kd)]
        if i == attn.num_heads - 1:  # the other heads' V is the next chunk's width
            v += [(r[2 * kd + c] + proj[vd * i + c]) ** 2 for c in range(vd)]
    p = "stages.1.blocks.1.attn"
    close(scores[f"{p}.heads"], heads)
    close(scores[f"{p}.qk"], qk)
    close(scores[f"{p}.v"], v)
    ffn = model.stages[1].downsample.res1[1].m
    hidden = bn_rows(ffn.pw1) + wg(ffn.pw2.conv.weight).flatten(2).sum((0, 2))
    close(scores["stages.1.downsample.res1.hidden"], hidden ** 2)
    blocks = [sum(wg(q).sum() for n, q in model.named_parameters()
                  if n.startswith(f"stages.1.blocks.{b}.")) ** 2 for b in range(2)]
    close(scores["stages.1.blocks.depth"], blocks)


# --------------------------------------------------------------------------- bookkeeping
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_channel_is_in_exactly_one_group_per_component(name: str) -> None:
    model = make(CONFIGS[name])
    state = model.state_dict()
    layout = group_layout(model)
    claimed: dict[tuple[str, str, int, str], torch.Tensor] = {}  # (prefix, key, axis, comp)
    for gname, groups in layout.items():
        seen = torch.zeros(groups.size, dtype=torch.long)
        keys = [(p.key, p.axis) for p in groups.parts]
        assert len(keys) == len(set(keys)), gname  # a slice is listed once per name
        for part in groups.parts:
            assert part.ids.shape == (state[part.key].shape[part.axis],), (gname, part.key)
            assert part.ids.min() >= -1 and part.ids.max() < groups.size
            seen += torch.bincount(part.ids[part.ids >= 0], minlength=groups.size)
            slot = (gname.rsplit(".", 1)[0], part.key, part.axis, component(gname))
            claimed[slot] = part.ids
        assert (seen > 0).all(), gname  # every group owns something
    attentions = {n.rsplit(".", 1)[0] for n in layout if component(n) == "qk"}
    for prefix in attentions:  # Q/K and V partition the q/k/v rows; heads own them all
        h = layout[f"{prefix}.heads"].size
        qk_width = layout[f"{prefix}.qk"].size // h
        for part in layout[f"{prefix}.qk"].parts:
            v_ids = claimed.get((prefix, part.key, part.axis, "v"))
            head_ids = claimed[(prefix, part.key, part.axis, "heads")]
            assert (head_ids >= 0).all()
            q = part.ids >= 0
            assert torch.equal(part.ids[q] // qk_width, head_ids[q])  # head-major
            if v_ids is not None and "qkv" in part.key:
                assert torch.equal(q, v_ids < 0), part.key  # each row: Q/K xor V


@pytest.mark.parametrize("name", ["mhsa-sandwich", "efficientvit"])
def test_depth_groups_hold_every_tensor_of_their_block(name: str) -> None:
    model = make(CONFIGS[name])
    layout = group_layout(model)
    container = "blocks" if name.startswith("mhsa") else "stages.1.blocks"
    depth = layout[f"{container}.depth"]
    keys = [k for k, v in model.state_dict().items()
            if k.startswith(f"{container}.") and v.dim() > 0]
    assert sorted(p.key for p in depth.parts) == sorted(keys)
    for part in depth.parts:
        assert (part.ids == int(part.key[len(container) + 1:].split(".")[0])).all()


def test_group_sizes_follow_the_config() -> None:
    layout = group_layout(make(CONFIGS["mhsa-sandwich"]))
    sizes = {n: g.size for n, g in layout.items() if n.startswith("blocks.1.")}
    assert sizes == {"blocks.1.attn.heads": 2, "blocks.1.attn.qk": 6, "blocks.1.attn.v": 10,
                     "blocks.1.pre_ffns.0.hidden": 48, "blocks.1.mlp.hidden": 48}
    layout = group_layout(make(CONFIGS["efficientvit-sandwich2"]))
    names = [n for n in layout if n.startswith("stages.1.")]
    assert names[:3] == ["stages.1.downsample.res1.hidden", "stages.1.downsample.res2.hidden",
                         "stages.1.blocks.0.ffn0.hidden"]
    assert layout["stages.1.blocks.1.attn.v"].size == 2 * 6  # v_ratio 0.5 of 24 / 2 heads
    assert layout["stages.1.downsample.res1.hidden"].size == 32  # 2 x the old width 16
    assert layout["stages.1.blocks.0.ffn3.hidden"].size == 48


def test_unknown_model_has_no_groups() -> None:
    with pytest.raises(TypeError, match="VisionTransformer or an EfficientViT"):
        group_layout(nn.Linear(2, 2))


# ---------------------------------------------------------------------------- accumulator
def test_accumulator_sums_eval_mode_batch_scores_and_leaves_the_model_as_it_was() -> None:
    model = make(EVIT).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [batch(EVIT, seed=s) for s in range(3)]
    got = taylor_importance(model, iter(batches), num_batches=2)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all((p.grad == 0.5).all() for p in model.parameters())
    reference = make(EVIT).eval()
    per_batch = []
    for x, y in batches[:2]:
        reference.zero_grad(set_to_none=True)
        F.cross_entropy(reference(x), y).backward()
        per_batch.append(scores_from_grads(reference))
    name = "stages.1.blocks.0.attn.qk"
    close(got[name], per_batch[0][name] + per_batch[1][name])
    assert set(got) == set(per_batch[0])


def test_accumulator_scores_in_eval_mode_not_training_mode() -> None:
    model = make(EVIT)
    x, y = batch(EVIT)
    got = taylor_importance(model, [(x, y)], num_batches=5)  # fewer batches than asked: uses 1
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    train_mode = scores_from_grads(model)["stages.0.blocks.0.ffn0.hidden"]
    assert not torch.allclose(got["stages.0.blocks.0.ffn0.hidden"], train_mode, rtol=1e-3)


def test_accumulator_reads_model_output_logits() -> None:
    class Wrapped(VisionTransformer):
        def forward(self, x: torch.Tensor) -> ModelOutput:
            return ModelOutput(super().forward(x), {"extra": x.sum()})

    plain = make(TINY)
    wrapped = Wrapped(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=12,
                      depth=2, num_heads=2, qk_dim=None, v_dim=None, mlp_ratio=4.0,
                      attn="mhsa", sandwich=0)
    wrapped.load_state_dict(plain.state_dict())
    batches = [batch(TINY, seed=s) for s in range(2)]
    a = taylor_importance(plain, batches, num_batches=2)
    b = taylor_importance(wrapped, batches, num_batches=2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulator_sums_squares_of_per_batch_sums() -> None:
    model = make(TINY)
    batches = [batch(TINY, seed=s) for s in range(2)]
    total = taylor_importance(model, batches, num_batches=2)["blocks.0.mlp.hidden"]
    signed = []
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model.eval()(x), y).backward()
        mlp = model.blocks[0].mlp
        signed.append(rows(mlp.fc1.weight) + wg(mlp.fc1.bias) + wg(mlp.fc2.weight).sum(0))
    close(total, signed[0] ** 2 + signed[1] ** 2)
    assert not torch.allclose(total, (signed[0] + signed[1]) ** 2)


def test_accumulator_needs_batches() -> None:
    model = make(TINY)
    with pytest.raises(ValueError, match="num_batches"):
        taylor_importance(model, [batch(TINY)], num_batches=0)
    with pytest.raises(ValueError, match="no batches"):
        taylor_importance(model, [], num_batches=1)


def test_scores_round_trip_through_safetensors(tmp_path) -> None:
    scores = taylor_importance(make(CONFIGS["cga-sandwich"]), [batch(TINY)], num_batches=1)
    save_scores(tmp_path / "scores.safetensors", scores)
    loaded = load_scores(tmp_path / "scores.safetensors")
    assert list(loaded) == list(scores)
    assert all(torch.equal(loaded[k], v) and v.dtype == torch.float64 for k, v in scores.items())


# ------------------------------------------------------------------------------ summaries
def test_keep_fraction_counts_the_top_scores_covering_the_total() -> None:
    scores = torch.tensor([1.0, 8.0, 0.0, 1.0])  # sorted 8, 1, 1, 0: cumulative 8, 9, 10, 10
    assert keep_fraction(scores, 0.9) == 0.5
    assert keep_fraction(scores, 0.95) == 0.75
    assert keep_fraction(scores, 0.8) == 0.25
    assert keep_fraction(scores, 1.0) == 0.75
    assert math.isnan(keep_fraction(torch.zeros(3), 0.9))
    with pytest.raises(ValueError, match="coverage"):
        keep_fraction(scores, 0.0)


def fake_vit_scores(depth: int = 3) -> dict[str, torch.Tensor]:
    scores = {}
    for b in range(depth):
        scores[f"blocks.{b}.attn.heads"] = torch.tensor([1.0, 1.0, 1.0, 1.0])
        scores[f"blocks.{b}.attn.qk"] = torch.tensor([9.0, 1.0, 0.0, 0.0] * 2)
        scores[f"blocks.{b}.attn.v"] = torch.ones(8) * (b + 1)
        scores[f"blocks.{b}.pre_ffns.0.hidden"] = torch.tensor([10.0, 0.0])
        scores[f"blocks.{b}.mlp.hidden"] = torch.tensor([0.0, 0.0])
    scores["blocks.depth"] = torch.tensor([18.0, 1.0, 1.0])
    return scores


def test_summarize_pools_components_per_third_of_depth(tmp_path) -> None:
    summary = summarize(fake_vit_scores())
    assert summary["imp_heads_keep90_s0"] == 1.0
    assert summary["imp_qk_keep90_s1"] == 0.25  # 9 + 9 of 20 >= 18 with 2 of 8
    assert summary["imp_qk_keep95_s2"] == 3 / 8  # 9 + 9 + 1 = 19 of 20
    assert summary["imp_ffn_keep90_s2"] == 0.25  # one of the pre-FFN + MLP's 4 channels
    assert summary["imp_v_keep90_s0"] == 1.0  # equal scores: 7 of 8 cover only 87.5%
    assert summary["imp_depth_keep90_s0"] == 1 / 3 and summary["imp_depth_keep95_s0"] == 2 / 3
    assert len(summary) == 2 * (4 * 3 + 1)
    six = summarize(fake_vit_scores(depth=6))
    assert {k.rsplit("_", 1)[1] for k in six} == {"s0", "s1", "s2"}
    frame = pd.DataFrame([summary])  # keys are valid parquet column names
    frame.to_parquet(tmp_path / "summary.parquet")
    assert pd.read_parquet(tmp_path / "summary.parquet").columns.tolist() == list(summary)


def test_summarize_uses_efficientvit_stages() -> None:
    scores = taylor_importance(make(EVIT), [batch(EVIT)], num_batches=1)
    summary = summarize(scores, coverages=(0.5,))
    assert set(summary) == {f"imp_{c}_keep50_s{s}" for c in ("heads", "qk", "v", "ffn", "depth",
                                                              "width") for s in (0, 1)}
    assert summary["imp_depth_keep50_s0"] == 1.0  # one block: it is all of it
    assert all(0 < v <= 1 for v in summary.values())


def test_a_cascades_stages_are_scored_and_summarised_by_thirds_of_depth() -> None:
    config = CONFIGS["cascade"].replace(depth=3, cascade_feature_reuse=False,
                                        cascade_relation_reuse=False)
    model = make(config)
    alone = taylor_importance(model, [batch(config)], num_batches=1)  # the last stage's loss
    assert alone["stages.0.blocks.0.mlp.hidden"].abs().sum() == 0  # no reuse: no gradient
    answers = search_spaces.get("vit").structure(config).answers
    scores = taylor_importance(model, [batch(config)], num_batches=1, answers=answers)
    assert {n for n in scores if n.endswith("depth")} == {
        "stages.0.blocks.depth", "stages.1.blocks.depth", "blocks.depth"}
    assert all(scores[f"stages.{k}.blocks.{b}.mlp.hidden"].sum() > 0
               for k in (0, 1) for b in range(3))  # every stage answers: scored by its loss
    torch.testing.assert_close(scores["blocks.1.mlp.hidden"], alone["blocks.1.mlp.hidden"])
    summary = summarize(scores, coverages=(0.5,))
    assert {k.rsplit("_", 1)[1] for k in summary if "_ffn_" in k} == {"s0", "s1", "s2"}
    frame = retained_fractions(scores)
    assert set(frame[frame.block.str.startswith("stages.0.")].stage) == {0, 1, 2}


def test_retained_fractions_table_per_block_and_component() -> None:
    frame = retained_fractions(fake_vit_scores(), coverage=0.9)
    assert frame.columns.tolist() == ["block", "stage", "component", "retained"]
    assert len(frame) == 3 * 4  # depth is not per block
    row = frame[(frame.block == "blocks.2") & (frame.component == "ffn")].iloc[0]
    assert row.stage == 2 and row.retained == 0.25
    assert frame[frame.component == "qk"].retained.tolist() == [0.25, 0.25, 0.25]
    scores = taylor_importance(make(EVIT), [batch(EVIT)], num_batches=1)
    blocks = retained_fractions(scores).block.unique().tolist()
    assert blocks == ["stages.0.blocks.0", "stages.1.downsample", "stages.1.blocks.0",
                      "stages.1.blocks.1"]
