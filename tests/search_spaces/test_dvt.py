"""DVT cascades: threshold fitting, early exit == every stage then the exit rule, reuse,
the cost model against fvcore per stage, the summed loss, warm start and the config rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Fixed
from search_spaces.policies import cascade as cascading
from search_spaces.policies.cascade import OFF, exit_proportions, fit_thresholds, schedule
from search_spaces.policies.cascade import reuse as dvt
from search_spaces.vit import ViTConfig, check_dims
from trainers.losses import objective_for
from trainers.measure import count_macs, trace_macs
from trainers.warmstart import plan, read_init, warm_start

VIT = search_spaces.get("vit")
IMG, PATCH, DIM, HEADS, CLASSES = 16, 4, 24, 2, 5  # a 4x4 grid: stages 2x2, 3x3, 4x4


def cascade(**changes) -> ViTConfig:
    fields = {"img_size": IMG, "patch_size": PATCH, "embed_dim": DIM, "depth": 2,
              "num_heads": HEADS, "token_policy": "cascade"}
    return ViTConfig(**{**fields, **changes})


def built(config: ViTConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = VIT.build(config, num_classes=CLASSES, in_chans=1)
    for stage in model.stage_list():  # a sharp head: images differ in confidence
        stage.head.weight.data.mul_(60)
    return model.eval()


def images(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, IMG, IMG, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- threshold fitting
def test_thresholds_fitted_by_hand_give_exact_exit_fractions() -> None:
    # 10 images, 3 stages; q = 1: a third each -> floor(10/3) = 3 exit at stage 1 (the 3
    # most confident there), then 3 of the 7 still running exit at stage 2, 4 reach stage 3
    stage1 = torch.tensor([.95, .30, .80, .55, .99, .40, .62, .71, .20, .50])
    stage2 = torch.tensor([.10, .90, .99, .35, .10, .85, .60, .97, .45, .30])
    conf = torch.stack([stage1, stage2, torch.zeros(10)], dim=1)
    assert exit_proportions(1.0, 3) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert exit_proportions(2.0, 3) == pytest.approx((2 / 14, 4 / 14, 8 / 14))
    t1, t2 = fit_thresholds(conf, exit_proportions(1.0, 3))
    assert t1 == pytest.approx(0.80)  # .99, .95, .80 exit (images 4, 0, 2)
    # still running: 1 .90, 3 .35, 5 .85, 6 .60, 7 .97, 8 .45, 9 .30 -> .97 .90 .85 exit
    assert t2 == pytest.approx(0.85)
    # q = 2: floor(10 * 2/14) = 1 at stage 1 (.99), floor(10 * 4/14) = 2 of the rest
    t1, t2 = fit_thresholds(conf, exit_proportions(2.0, 3))
    assert (t1, t2) == (pytest.approx(0.99), pytest.approx(0.97))  # .97 (7) and .99 (2)
    # q = 59/20 on 3 images: floor(3 * 0.075) = 0 leave at stage 1: that exit is off
    assert fit_thresholds(conf[:3], exit_proportions(2.95, 3))[0] == OFF
    # q spaced evenly in log q: the middle of 3 is sqrt(2.95 x 0.05) = 0.38406
    assert schedule(1) == (1.0,) and schedule(3) == (2.95, 0.3841, 0.05)
    assert exit_proportions(0.25, 3) == pytest.approx(exit_proportions(4.0, 3)[::-1])


def test_operating_points_fit_on_calibration_outputs_and_need_them() -> None:
    config = cascade()
    model, x = built(config), images(30)
    adaptive = VIT.adaptive(config)
    assert adaptive.knobs() == {"cascade_exit_1": OFF, "cascade_exit_2": OFF}
    net = built(adaptive.with_knobs(adaptive.calibration_knobs()))
    net.load_state_dict(model.state_dict())
    with torch.no_grad():
        outputs = [(net(x[:16]), None), (net(x[16:]), None)]
    points = adaptive.operating_points(3, {}, lambda: iter(outputs))
    assert points[0] == adaptive.knobs()  # point 0: the trained (full) cascade
    for q, knobs in zip(schedule(2), points[1:], strict=True):
        with torch.no_grad():
            exits = built(adaptive.with_knobs(knobs))
            exits.load_state_dict(model.state_dict())
            stage = exits(x).aux["cascade_exit"]
        wanted = [math.floor(30 * p) for p in exit_proportions(q, 3)[:2]]
        assert [int((stage == k).sum()) for k in (0, 1)] == wanted  # exact fractions
    with pytest.raises(ValueError, match="calibration"):
        adaptive.operating_points(3, {})
    with pytest.raises(ValueError, match="every exit off"):  # outputs with exits taken
        adaptive.operating_points(2, {}, lambda: iter([(built(config.replace(
            cascade_exit_1=0.01))(x), None)]))


# -------------------------------------------------------------------------------- early exit
@pytest.mark.parametrize("changes", [
    {}, {"attn": "cga"}, {"sandwich": 1, "qk_dim": 8, "v_dim": 16},
    {"cascade_scales": "0.5", "cascade_relation_reuse": False},
    {"cascade_feature_reuse": False, "cascade_scales": "0.3+0.6"},
])
def test_early_exit_equals_every_stage_then_the_exit_rule(changes) -> None:
    config = cascade(**changes)
    stages = len(config.cascade_scales.split("+")) + 1
    model, x = built(config), images(24)
    with torch.no_grad():
        every = torch.stack(model.forward_stages(x), dim=1)  # (B, S, C)
    conf = every.softmax(-1).amax(-1)
    cut = [float(conf[:, k].median()) for k in range(stages - 1)]
    knobs = dict(zip(("cascade_exit_1", "cascade_exit_2"), cut, strict=False))
    fast = built(config.replace(**knobs))
    fast.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = fast(x)
    expected = torch.full((24,), stages - 1)
    for k in reversed(range(stages - 1)):  # the first stage confident enough answers
        expected = torch.where(conf[:, k] >= cut[k], k, expected)
    assert torch.equal(out.aux["cascade_exit"], expected)
    assert 0 < int((expected == 0).sum()) < 24  # some leave early, some go on
    chosen = every[torch.arange(24), expected]
    torch.testing.assert_close(out.logits, chosen, atol=1e-5, rtol=1e-5)
    ran = out.aux["cascade_confidence"]
    assert torch.isnan(ran[expected == 0, 1:]).all() and not torch.isnan(ran[:, 0]).any()


def test_training_returns_every_stage_and_the_summed_cross_entropy() -> None:
    config = cascade()
    model, x = built(config).train(), images(6)
    labels = torch.arange(6) % CLASSES
    out = model(x)
    assert out.aux["cascade_logits"].shape == (6, 2, CLASSES)
    loss = objective_for(config, label_smoothing=0.1)(out, labels)
    stages = [*out.aux["cascade_logits"].unbind(1), out.logits]
    expected = sum(F.cross_entropy(s, labels, label_smoothing=0.1) for s in stages)
    torch.testing.assert_close(loss, expected)  # equal weights, one smoothing


# ------------------------------------------------------------------------------------- reuse
def test_reuse_changes_the_next_stage_and_gets_gradients() -> None:
    config = cascade()
    model, x = built(config).train(), images(4)
    loss = model(x).logits.logsumexp(-1).sum() + model(x).aux["cascade_logits"].sum()
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    for pattern in ("feature_reuse.0.fc1.weight", "relation_reuse.1.fc2.weight",
                    "blocks.0.mlp.reuse.weight", "stages.1.blocks.1.mlp.reuse.weight"):
        assert pattern in names
        grad = dict(model.named_parameters())[pattern].grad
        assert grad is not None and grad.abs().sum() > 0, pattern
    model.eval()
    with torch.no_grad():
        before = model.forward_stages(x)
        for name in ("feature_reuse", "relation_reuse"):
            weight = getattr(model, name)[0].fc2.weight
            weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
            after = model.forward_stages(x)
            assert torch.equal(after[0], before[0])  # stage 1 has no upstream
            assert not torch.allclose(after[1], before[1])  # stage 2 reads stage 1's
            before = after


def _resized_axis_by_axis(x: torch.Tensor, g_from: int, g_to: int) -> torch.Tensor:
    """The reference: every patch axis of the maps resized with resize_grid, in turn."""
    def axis(t: torch.Tensor) -> torch.Tensor:
        grid = dvt.resize_grid(t.reshape(-1, 1, g_from, g_from), g_to)
        return grid.reshape(*t.shape[:-1], g_to * g_to)

    row = axis(x[:, :, :1, 1:])
    col = axis(x[:, :, 1:, :1].transpose(-1, -2)).transpose(-1, -2)
    pairs = axis(axis(x[:, :, 1:, 1:]).transpose(-1, -2)).transpose(-1, -2)
    top = torch.cat([x[:, :, :1, :1], row], dim=-1)
    return torch.cat([top, torch.cat([col, pairs], dim=-1)], dim=-2)


def test_relation_resize_keeps_the_class_token_apart() -> None:
    x = torch.full((1, 2, 5, 5), 3.0)  # 2x2 grid + class token
    x[:, :, 0, 0], x[:, :, 0, 1:], x[:, :, 1:, 0] = 5.0, 1.0, 2.0
    y = dvt.resize_relation(x, dvt.relation_matrix(2, 3))
    assert y.shape == (1, 2, 10, 10)
    assert (y[:, :, 0, 0] == 5).all() and (y[:, :, 0, 1:] == 1).all()
    assert (y[:, :, 1:, 0] == 2).all() and (y[:, :, 1:, 1:] == 3).all()
    for g_from, g_to in ((2, 3), (4, 5), (5, 7), (3, 2)):  # == resizing axis by axis
        n1 = 1 + g_from * g_from
        maps = torch.randn(2, 3, n1, n1, generator=torch.Generator().manual_seed(g_to))
        torch.testing.assert_close(dvt.resize_relation(maps, dvt.relation_matrix(g_from, g_to)),
                                   _resized_axis_by_axis(maps, g_from, g_to))
    grid = torch.arange(4.0).view(1, 1, 2, 2)
    assert dvt.resize_grid(grid, 4).tolist() == [[[[0, 0, 1, 1], [0, 0, 1, 1],
                                                   [2, 2, 3, 3], [2, 2, 3, 3]]]]


# -------------------------------------------------------------------------------------- cost
class _StageAlone(nn.Module):
    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x, tokens, logits):
        return self.model.run(self.k, x, tokens, logits)[1]


def fvcore(module: nn.Module, inputs: tuple) -> float:
    return float(trace_macs(module, inputs))


class _Resize(nn.Module):
    def __init__(self, g_from: int, g_to: int) -> None:
        super().__init__()
        self.register_buffer("matrix", dvt.relation_matrix(g_from, g_to))

    def forward(self, x):
        return dvt.resize_relation(x, self.matrix)


@pytest.mark.parametrize(("g_from", "g_to"), [(4, 5), (5, 7), (2, 3)])
def test_relation_resize_is_counted_map_by_map(g_from, g_to) -> None:
    channels = 4 * 3  # layers x heads maps per image
    n1, n2 = 1 + g_from**2, 1 + g_to**2
    # M @ X: n2 x n1 times n1 x n1 for every map; then (.) @ M^T: n2 x n1 times n1 x n2
    by_hand = channels * (n2 * n1 * n1 + n2 * n1 * n2)
    assert count_macs(_Resize(g_from, g_to), (channels, n1, n1)) == by_hand
    # and the same for the module a cascade runs (its channel MLP counted apart)
    reuse = dvt.RelationReuse(4, 3, g_from, g_to)
    mlp = n1 * n1 * (channels * 3 * channels) * 2  # fc1 and fc2 per map position
    assert count_macs(reuse, (4, 3, n1, n1)) == by_hand + mlp


@pytest.mark.parametrize("changes", [{}, {"attn": "cga", "sandwich": 1},
                                     {"cascade_feature_reuse": False}])
def test_cost_is_fvcore_of_each_stage_cumulated(changes) -> None:
    config = cascade(**changes)
    model = built(config)
    cost = VIT.adaptive(config).cost_model(model, (1, IMG, IMG), count_macs)
    x = images(1)
    tokens = logits = None
    alone = []
    for k in range(3):
        inputs = (x, tokens, logits)
        alone.append(fvcore(_StageAlone(model, k), inputs))
        with torch.no_grad():
            tokens, _, logits = model.run(k, x, tokens, logits)
    assert alone[1] > alone[0] > 0
    assert cost.cumulative == pytest.approx(tuple(torch.tensor(alone).cumsum(0).tolist()))
    assert cost.full() == pytest.approx(sum(alone))
    stage = torch.tensor([0, 2, 1, 0])
    per = cost.per_image({"cascade_exit": stage})
    assert per.tolist() == pytest.approx([cost.cumulative[s] for s in stage.tolist()])
    usage = cost.usage({"cascade_exit": stage})
    assert usage["exit_share_1"].mean() == 0.5 and usage["exit_share_3"].mean() == 0.25
    fresh = built(config)  # counted first in eval mode: the same (a trial counts in train)
    again = VIT.adaptive(config).cost_model(fresh.eval(), (1, IMG, IMG), count_macs)
    assert again.cumulative == cost.cumulative


# ------------------------------------------------------------------------- warm start, config
def test_the_last_stage_warm_starts_from_a_static_parent() -> None:
    parent = VIT.build(cascade(token_policy="static"), num_classes=CLASSES, in_chans=1).eval()
    for reuse in (True, False):
        config = cascade(cascade_feature_reuse=reuse, cascade_relation_reuse=reuse)
        model = built(config)
        shapes = {n: tuple(t.shape) for n, t in parent.state_dict().items()}
        fresh = plan(model, shapes, adaptive=VIT.adaptive(config))
        assert fresh and all(VIT.adaptive(config).is_added(n) for n in fresh)
        assert not any(n.startswith(("blocks.0.attn", "head.", "pos_embed")) for n in fresh)
    state = model.state_dict()  # no reuse: the last stage computes the parent's logits
    state.update(parent.state_dict())
    model.load_state_dict(state)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_stages(x)[-1], parent(x))


def test_earlier_stages_start_as_the_parent_with_a_resized_position_embedding(
        tmp_path) -> None:
    from safetensors.torch import save_file

    def resized(pos: torch.Tensor, grid: int) -> torch.Tensor:  # bicubic, class token apart
        side = math.isqrt(pos.shape[1] - 1)
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic",
                                align_corners=False, antialias=True)
        return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    torch.manual_seed(0)
    parent = VIT.build(cascade(token_policy="static"), num_classes=CLASSES, in_chans=1).eval()
    path = tmp_path / "parent.safetensors"
    save_file({k: v.contiguous() for k, v in parent.state_dict().items()}, str(path))
    config = cascade()
    model = built(config, seed=5)
    fresh = warm_start(model, read_init(path), adaptive=VIT.adaptive(config))
    assert fresh and all(n.startswith(("feature_reuse.", "relation_reuse.")) or ".reuse." in n
                         for n in fresh)  # only the reuse modules start fresh
    state = model.state_dict()
    for k, grid in enumerate(model.cascade.grids[:-1]):
        want = resized(parent.pos_embed.detach(), grid)
        torch.testing.assert_close(state[f"stages.{k}.pos_embed"], want)
        for name, tensor in parent.state_dict().items():
            if name != "pos_embed":
                assert torch.equal(state[f"stages.{k}.{name}"], tensor), (k, name)
    # no reuse: stage 1 is the parent on the resized image with the resized embedding
    plain = cascade(cascade_feature_reuse=False, cascade_relation_reuse=False)
    model = built(plain, seed=5)
    assert warm_start(model, read_init(path), adaptive=VIT.adaptive(plain)) == []
    small = VIT.build(cascade(token_policy="static", img_size=PATCH * model.cascade.grids[0]),
                      num_classes=CLASSES, in_chans=1).eval()
    small.load_state_dict(model.stages[0].state_dict())
    x = images(3)
    shrunk = F.interpolate(x, (model.sizes[0], model.sizes[0]), mode="bilinear",
                           align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_stages(x, 1)[0], small(shrunk))
    # the caller can still start the earlier stages fresh
    model = built(plain, seed=5)
    fresh = warm_start(model, read_init(path), adaptive=VIT.adaptive(plain), fresh=["stages.*"])
    assert fresh and all(n.startswith("stages.") for n in fresh)
    assert not torch.equal(model.state_dict()["stages.0.head.weight"], parent.head.weight)


def test_config_rules_name_the_field() -> None:
    assert cascade().cascade_params(4).grids == (2, 3, 4)
    assert ViTConfig(token_policy="cascade").cascade_params(14).grids == (7, 10, 14)  # paper's
    assert cascade(img_size=28).cascade_params(7).grids == (4, 5, 7)
    with pytest.raises(ConfigError, match="cascade_scales"):
        cascade(cascade_scales="0.5+1.5")
    assert cascade(patch_size=8).cascade_params(2).grids == (1, 2)  # 1x1 twice: one stage
    assert VIT.adaptive(cascade(patch_size=8)).knobs() == {"cascade_exit_1": OFF}
    with pytest.raises(ConfigError, match="single stage"):
        cascade(patch_size=16)
    with pytest.raises(ConfigError, match="cascade_scales"):
        cascade(cascade_scales="0.7+0.5")
    with pytest.raises(ConfigError, match="cascade_exit_1"):
        cascade(cascade_exit_1=0.0)
    with pytest.raises(ConfigError, match="space.dims.cascade_scales"):
        check_dims({"img_size": Fixed(16), "patch_size": Choice((4, 16)),
                    "token_policy": Fixed("cascade")})
    check_dims({"img_size": Fixed(28), "patch_size": Fixed(4),
                "token_policy": Choice(("static", "cascade"))})
    assert set(cascading.DIMS) <= set(VIT.dims)
    assert VIT.adaptive(cascade(cascade_scales="0.5")).knobs() == {"cascade_exit_1": OFF}
