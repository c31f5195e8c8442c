"""EfficientViT family: exact timm parameter counts, paper MACs, timm-equal logits, configs."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from optuna.samplers import RandomSampler
from optuna.trial import FixedTrial
from safetensors.torch import load_file, save_file

import search_spaces
from search_spaces import efficientvit as ev
from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Fixed
from search_spaces.layers.cga import WindowedCGA, relative_offset_index

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)

TIMM_PARAMS = {"m0": 2_349_436, "m1": 2_980_560, "m2": 4_187_554, "m3": 6_900_722,
               "m4": 8_804_228, "m5": 12_473_772}
PAPER_MACS = {"m0": 79e6, "m1": 167e6, "m2": 201e6, "m3": 263e6, "m4": 299e6, "m5": 522e6}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics/affines and attention biases, so equal outputs mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and ("bn." in name or "attention_biases" in name):
                low = 0.5 if name.endswith(("running_var", "bn.weight")) else -0.3
                t.copy_(torch.rand(t.shape, generator=g) * 0.6 + low)


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    import timm  # search_spaces (imported above) already made torchvision importable

    return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_preset_params_equal_timm(name: str) -> None:
    model = ev.build(ev.PRESETS[name], num_classes=1000, in_chans=3)
    assert n_params(model) == TIMM_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_preset_macs_match_paper(name: str) -> None:
    model = ev.build(ev.PRESETS[name], num_classes=1000).eval()
    flops = FlopCountAnalysis(model, torch.randn(1, 3, 224, 224))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    assert flops.total() == pytest.approx(PAPER_MACS[name], rel=0.03)


def test_m0_logits_equal_timm_with_its_weights() -> None:
    ref = timm_model("efficientvit_m0").eval()
    randomize_(ref)
    ours = ev.build(ev.PRESETS["m0"], num_classes=1000).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same parameter names and shapes
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() < 1e-4


def test_padded_windows_equal_timm_local_window_attention() -> None:
    from timm.models.efficientvit_msra import LocalWindowAttention

    # 10x10 map, 4x4 windows: 2 rows/cols of zero padding; 3 heads with their own kernels
    ref = LocalWindowAttention(48, 16, 3, attn_ratio=1.0, resolution=10, window_resolution=4,
                               kernels=(7, 5, 3)).eval()
    randomize_(ref)
    ours = WindowedCGA(48, key_dim=16, num_heads=3, value_dim=16, resolution=10,
                       window_size=4, kernels=(7, 5, 3)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 48, 10, 10)
    with torch.no_grad():
        expected = ref(x)
        assert (ours(x) - expected).abs().max() < 1e-5
        got = ours(x.contiguous(memory_format=torch.channels_last))
        assert (got - expected).abs().max() < 1e-5


def test_relative_offset_index_uses_absolute_offsets() -> None:
    idx = relative_offset_index(3)
    assert idx.shape == (9, 9)
    assert idx[0, 1] == 1 and idx[0, 3] == 3  # (0,0)->(0,1): |dx|=1; (0,0)->(1,0): |dy|=1
    assert idx[0, 8] == 2 * 3 + 2  # (0,0)->(2,2)
    assert idx[8, 0] == idx[0, 8] and idx[2, 6] == 2 * 3 + 2  # (0,2)->(2,0): |dy|=2, |dx|=2
    assert idx.diagonal().eq(0).all() and int(idx.max()) == 8


def test_registered_space_builds_presets() -> None:
    space = search_spaces.get("efficientvit")
    assert space.config_cls is ev.EfficientViTConfig and set(space.presets) == set(TIMM_PARAMS)
    model = space.build(space.presets["m0"], num_classes=10)
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_config_json_round_trip_and_key() -> None:
    config = ev.PRESETS["m5"]
    again = ev.EfficientViTConfig.from_json(config.to_json())
    assert again == config and again.key() == config.key()
    assert isinstance(again.kernels, tuple) and isinstance(again.v_ratio, float)
    assert ev.EfficientViTConfig(**dataclasses.asdict(config)).key() == config.key()
    assert config.replace(key_dim=8).key() != config.key()
    assert len({c.key() for c in ev.PRESETS.values()}) == len(ev.PRESETS)


BAD = [
    ({"img_size": 0}, "`img_size`=0"),
    ({"stem_stride": 2}, "`stem_stride`=2 must be one of (4, 8, 16)"),
    ({"embed_dims": [64, 128, 192]}, "`embed_dims`=[64, 128, 192] must be a tuple"),
    ({"embed_dims": (), "depths": (), "num_heads": ()}, "must have 1 to 4 entries"),
    ({"depths": (1, 2)}, "`depths` has 2 entries but `embed_dims` has 3"),
    ({"num_heads": (4, 4)}, "`num_heads` has 2 entries"),
    ({"embed_dims": (60, 128, 192), "num_heads": (2, 4, 4)}, "`embed_dims[0]`=60 must be a mul"),
    ({"num_heads": (4, 5, 4)}, "`num_heads[1]`=5 must divide `embed_dims[1]`=128"),
    ({"num_heads": (4, 0, 4)}, "`num_heads[1]`=0 must be an integer >= 1"),
    ({"depths": (1, 0, 3)}, "`depths[1]`=0 must be an integer >= 1"),
    ({"key_dim": 0}, "`key_dim`=0"),
    ({"v_ratio": 0.0}, "`v_ratio`=0.0 must be a number > 0"),
    ({"v_ratio": 0.01}, "`v_ratio`=0.01 gives value dim"),
    ({"ffn_ratio": -1.0}, "`ffn_ratio`=-1.0 must be a number > 0"),
    ({"sandwich": -1}, "`sandwich`=-1 must be an integer >= 0"),
    ({"kernels": (5, 4, 5, 5)}, "`kernels[1]`=4 must be odd"),
    ({"kernels": (5, 5, 5)}, "`kernels` has 3 entries; it needs at least max(`num_heads`)=4"),
    ({"window_size": 0}, "`window_size`=0"),
]


@pytest.mark.parametrize(("changes", "message"), BAD)
def test_config_validation_names_field_and_rule(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ev.EfficientViTConfig(**changes)
    assert message in str(err.value)


def test_fixed_trial_builds_small_input_model_that_trains() -> None:
    params = {"img_size": 28, "stem_stride": 4, "num_stages": 3, "width_1": 32, "width_2": 48,
              "width_3": 64, "depth_1": 1, "depth_2": 2, "depth_3": 1, "heads_1": 2,
              "heads_2": 4, "heads_3": 1, "key_dim": 8, "v_ratio": 0.5, "ffn_ratio": 3.0,
              "sandwich": 2, "kernels": "7,5,3,3", "window_size": 4}
    space = search_spaces.get("efficientvit")
    config = space.suggest(FixedTrial(params), {"img_size": Fixed(28)})
    assert config.embed_dims == (32, 48, 64) and config.kernels == (7, 5, 3, 3)
    assert config.resolutions() == (7, 4, 2) and config.value_dims() == (8, 6, 32)
    model = space.build(config, num_classes=10, in_chans=1)
    assert model.patch_embed(torch.randn(1, 1, 28, 28)).shape[-2:] == (7, 7)
    block = model.stages[0].blocks[0]
    assert list(dict(block.named_children())) == ["dw0", "ffn0", "dw1", "ffn1", "mixer", "dw2",
                                                   "ffn2", "dw3", "ffn3"]
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_random_suggestions_always_validate_and_build() -> None:
    space = search_spaces.get("efficientvit")
    study = optuna.create_study(sampler=RandomSampler(seed=0))
    dims = {"img_size": Fixed(28)}
    stages = set()
    for i in range(40):
        config = space.suggest(study.ask(), dims)
        stages.add(len(config.embed_dims))
        if i < 3:
            model = space.build(config, num_classes=5, in_chans=1).eval()
            with torch.no_grad():
                assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()
    assert stages == {1, 2, 3, 4}


def test_define_by_run_draws_only_used_stages() -> None:
    study = optuna.create_study(sampler=RandomSampler(seed=1))
    trial = study.ask()
    config = ev.suggest(trial, {**ev.DIMS, "num_stages": Fixed(2)})
    assert len(config.embed_dims) == 2
    assert "width_2" in trial.params and "width_3" not in trial.params


def test_check_dims_accepts_defaults_and_rejects_bad_narrowing() -> None:
    ev.check_dims(ev.DIMS)
    ev.check_dims({"img_size": Fixed(8)})  # 8x8 digits: x16 still leaves one 1x1 token map
    assert search_spaces.get("efficientvit").check_fn is ev.check_dims
    with pytest.raises(ConfigError, match=r"`num_heads\[1\]`=3 must divide `embed_dims\[1\]`=32"):
        ev.check_dims({"num_stages": Fixed(2), "width_2": Choice((32, 48)),
                       "heads_2": Choice((1, 3))})
    with pytest.raises(ConfigError, match=r"`stem_stride`=32 must be one of \(4, 8, 16\)"):
        ev.check_dims({"img_size": Fixed(64), "stem_stride": Choice((4, 32))})
    with pytest.raises(ConfigError, match=r"`v_ratio`=0\.1 gives value dim"):
        ev.check_dims({"width_1": Choice((16, 32)), "heads_1": Choice((4,)),
                       "v_ratio": Choice((0.1, 1.0))})
    with pytest.raises(ConfigError, match="at least max"):
        ev.check_dims({"heads_1": Choice((8,)), "width_1": Fixed(64), "num_stages": Fixed(1)})


@pytest.mark.parametrize(("dims", "words"), [
    ({"key_dim": Choice((8, 0))}, ["space.dims.key_dim: value 0", "`key_dim`=0"]),
    ({"key_dim": Fixed(16.0)}, ["space.dims.key_dim: value 16.0", "integer >= 1"]),
    ({"sandwich": Choice((1, -1))}, ["space.dims.sandwich: value -1", "`sandwich`=-1"]),
    ({"window_size": Fixed(0)}, ["space.dims.window_size: value 0", "`window_size`=0"]),
    ({"depth_2": Choice((2, 0))}, ["space.dims.depth_2: value 0", "`depths[1]`=0"]),
    ({"num_stages": Choice((2, 5))}, ["space.dims.num_stages: value 5", "at most 4"]),
    ({"num_stages": Fixed(2.0)}, ["space.dims.num_stages: value 2.0", "integer >= 1"]),
    ({"width_1": Fixed(36)}, ["space.dims.width_1: value 36", "multiple of 8"]),
    ({"heads_3": Fixed(0)}, ["space.dims.heads_3: value 0", "`num_heads[2]`=0"]),
    ({"kernels": Fixed("5,x")}, ["space.dims.kernels: value '5,x'", "comma-separated"]),
    ({"kernels": Fixed("5,4,5,5")}, ["space.dims.kernels", "`kernels[1]`=4 must be odd"]),
    ({"ffn_ratio": Fixed(0.0)}, ["space.dims.ffn_ratio: value 0.0", "> 0"]),
    ({"depth": Fixed(2)}, ["['depth']", "not dimensions of 'efficientvit'"]),
])
def test_check_dims_rejects_bad_values_of_every_knob(dims: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        ev.check_dims(dims)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_check_dims_ignores_stages_that_are_never_drawn() -> None:
    ev.check_dims({"num_stages": Fixed(2), "depth_3": Fixed(0), "width_4": Fixed(1)})


def test_patch_merging_has_no_relu_after_squeeze_excite() -> None:
    merge = ev.PatchMerging(16, 32).eval()
    calls: list[int] = []
    merge.act.register_forward_hook(lambda *_: calls.append(1))
    se_out: list[torch.Tensor] = []
    merge.se.register_forward_hook(lambda _m, _i, out: se_out.append(out))
    conv3_in: list[torch.Tensor] = []
    merge.conv3.register_forward_pre_hook(lambda _m, args: conv3_in.append(args[0]))
    with torch.no_grad():
        merge(torch.randn(2, 16, 8, 8))
    assert len(calls) == 2  # after conv1 and conv2 only
    assert conv3_in[0] is se_out[0]


def test_no_weight_decay_names_every_attention_bias() -> None:
    model = ev.build(ev.EfficientViTConfig(img_size=28, stem_stride=4, embed_dims=(16, 32),
                                           depths=(1, 1), num_heads=(1, 2), kernels=(3, 3)),
                     num_classes=10)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names == {n for n in params if n.endswith("attention_biases")} and len(names) == 2
    assert all(params[n].ndim == 2 for n in names)  # 2-D: a 1-D filter would decay them


def test_eval_folds_batchnorm_without_changing_outputs_or_gradients() -> None:
    config = ev.EfficientViTConfig(img_size=28, stem_stride=4, embed_dims=(32, 48),
                                   depths=(1, 1), num_heads=(2, 2))
    model = ev.build(config, num_classes=3, in_chans=1)
    randomize_(model)
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    conv_bn = model.patch_embed.conv2
    folded = conv_bn(torch.randn(2, 4, 14, 14, generator=torch.Generator().manual_seed(3)))
    plain = conv_bn.bn(conv_bn.conv(torch.randn(2, 4, 14, 14,
                                                generator=torch.Generator().manual_seed(3))))
    assert (folded - plain).abs().max() < 1e-5
    model(x).sum().backward()
    assert conv_bn.conv.weight.grad is not None and conv_bn.bn.weight.grad is not None


def test_state_dict_exports_with_safetensors(tmp_path) -> None:
    model = ev.build(ev.PRESETS["m0"], num_classes=10).eval()
    randomize_(model)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))  # raises on shared-memory tensors
    again = ev.build(ev.PRESETS["m0"], num_classes=10).eval()
    again.load_state_dict(load_file(str(path)))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert not any("attention_bias_idxs" in k for k in model.state_dict())
    assert any("attention_bias_idxs" in k for k, _ in model.named_buffers())


def test_attention_only_blocks_wide_values_and_odd_input_sizes() -> None:
    config = ev.EfficientViTConfig(img_size=28, stem_stride=4, embed_dims=(32, 48),
                                   depths=(1, 1), num_heads=(2, 2), sandwich=0, v_ratio=1.5,
                                   window_size=4)
    assert config.value_dims() == (24, 36)  # wider than the 16/24-channel head chunks
    model = ev.build(config, num_classes=4, in_chans=1)
    assert [n for n, _ in model.stages[0].blocks[0].named_children()] == ["mixer"]
    for size in [(28, 28), (36, 20), (13, 50)]:  # windows pad where the map is not a multiple
        assert torch.isfinite(model(torch.randn(2, 1, *size))).all()
