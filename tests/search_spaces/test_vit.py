"""The ViT/DeiT family: timm parity, attention numerics, masks, sandwich layout, dims."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from safetensors.torch import load_model, save_model
from torch import nn

import search_spaces
from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Fixed
from search_spaces.layers.attention import (
    MultiHeadAttention,
    TokenGroupAttention,
    build_attention,
)
from search_spaces.vit import (
    DIMS,
    MAX_TOKENS,
    PRESETS,
    Block,
    ViTConfig,
    build,
    check_dims,
    suggest,
)

torch.set_num_threads(1)

SMALL = ViTConfig(img_size=28, patch_size=7, embed_dim=48, depth=2, num_heads=3)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("preset", "expected"),
                         [("deit_tiny", 5_717_416), ("deit_small", 22_050_664)])
def test_preset_param_counts_equal_timm(preset: str, expected: int) -> None:
    assert n_params(build(PRESETS[preset], num_classes=1000, in_chans=3)) == expected


def test_deit_tiny_matches_timm_logits_with_copied_weights() -> None:
    import timm  # after search_spaces (imported above), whose _compat makes timm importable

    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    with torch.no_grad():  # move norms and biases off their ones/zeros init too
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen(p.numel())))
    ours = build(PRESETS["deit_tiny"], num_classes=1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=gen(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == (2, 1000)
    assert (got - expected).abs().max().item() < 1e-4
    assert expected.std().item() > 0.1  # the comparison is not between two near-zero outputs


def test_mhsa_default_has_timm_layout() -> None:
    attn = build_attention("mhsa", 96, 4)
    assert attn.qkv.weight.shape == (288, 96) and attn.qkv.bias.shape == (288,)
    assert attn.proj.weight.shape == (96, 96) and attn.proj.bias.shape == (96,)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v, written out; q, k, v: (B, N, d)."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        logits = logits.masked_fill(~keep[:, None, :], float("-inf"))
    return logits.softmax(-1) @ v


def test_mhsa_with_separate_qk_and_v_widths_matches_reference() -> None:
    dim, heads, qk, vd = 24, 2, 5, 7
    attn = MultiHeadAttention(dim, heads, qk_dim=qk, v_dim=vd)
    assert attn.qkv.out_features == heads * (2 * qk + vd) and attn.proj.in_features == heads * vd
    x = torch.randn(3, 6, dim, generator=gen())
    w = attn.qkv(x)
    heads_out = []
    for h in range(heads):
        q = w[..., h * qk:(h + 1) * qk]
        k = w[..., heads * qk + h * qk:heads * qk + (h + 1) * qk]
        v = w[..., 2 * heads * qk + h * vd:2 * heads * qk + (h + 1) * vd]
        heads_out.append(reference_attention(q, k, v))
    expected = attn.proj(torch.cat(heads_out, -1))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_cga_cascades_heads_like_reference() -> None:
    dim, heads, qk = 24, 3, 4
    split = dim // heads
    attn = TokenGroupAttention(dim, heads, qk_dim=qk)
    x = torch.randn(2, 5, dim, generator=gen())
    outs: list[torch.Tensor] = []
    for i in range(heads):
        inp = x[..., i * split:(i + 1) * split] + (outs[-1] if outs else 0)
        w = attn.qkvs[i](inp)
        outs.append(reference_attention(w[..., :qk], w[..., qk:2 * qk], w[..., 2 * qk:]))
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(outs, -1)), atol=1e-5, rtol=1e-5)


def test_cga_first_head_reads_only_its_chunk() -> None:
    attn = TokenGroupAttention(24, 3, qk_dim=4)
    x = torch.randn(1, 5, 24, generator=gen(), requires_grad=True)
    captured: list[torch.Tensor] = []
    attn.qkvs[0].register_forward_hook(lambda m, i, o: captured.append(o))
    attn(x)
    (grad,) = torch.autograd.grad(captured[0].sum(), x)
    assert grad[..., 8:].abs().max() == 0 and grad[..., :8].abs().max() > 0


@pytest.mark.parametrize("kind", ["mhsa", "cga"])
def test_key_mask_equals_attention_over_kept_tokens(kind: str) -> None:
    attn = build_attention(kind, 24, 3, qk_dim=8)
    x = torch.randn(1, 7, 24, generator=gen())
    keep = torch.tensor([[True, False, True, True, False, True, False]])
    masked = attn(x, keep)
    subset = attn(x[:, keep[0]])
    torch.testing.assert_close(masked[:, keep[0]], subset, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x, torch.ones_like(keep)), attn(x))
    assert not torch.allclose(masked, attn(x))


def test_mask_must_be_boolean() -> None:
    attn = build_attention("mhsa", 24, 3)
    with pytest.raises(TypeError, match="boolean"):
        attn(torch.randn(1, 4, 24), torch.ones(1, 4))


def test_block_passes_mask_and_runs_sandwich_ffns_before_attention() -> None:
    block = Block(dim=24, num_heads=2, qk_dim=None, v_dim=None, mlp_ratio=2.0, attn="mhsa",
                  sandwich=2)
    order: list[str] = []
    for name in ("pre_ffns.0", "pre_ffns.1", "attn", "mlp"):
        block.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: order.append(n))
    x = torch.randn(1, 5, 24, generator=gen())
    keep = torch.tensor([[True, True, False, True, False]])
    out = block(x, keep)
    assert order == ["pre_ffns.0", "pre_ffns.1", "attn", "mlp"]
    torch.testing.assert_close(out[:, keep[0]], block(x[:, keep[0]]), atol=1e-5, rtol=1e-5)


def test_sandwich_adds_one_ffn_per_block_and_level() -> None:
    base = n_params(build(SMALL, num_classes=10, in_chans=1))
    ffn = 2 * 48 + (48 * 192 + 192) + (192 * 48 + 48)  # LayerNorm + fc1 + fc2, ratio 4
    for k in (1, 2):
        model = build(SMALL.replace(sandwich=k), num_classes=10, in_chans=1)
        assert n_params(model) == base + SMALL.depth * k * ffn


@pytest.mark.parametrize("changes", [
    {},
    {"patch_size": 4, "attn": "cga", "qk_dim": 16},
    {"qk_dim": 8, "v_dim": 32, "sandwich": 1, "mlp_ratio": 2.0, "num_heads": 6},
])
def test_small_input_forward_backward(changes: dict) -> None:
    config = SMALL.replace(**changes)
    model = build(config, num_classes=10, in_chans=1)
    x = torch.randn(4, 1, 28, 28, generator=gen())
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.pos_embed.shape == (1, 1 + (28 // config.patch_size) ** 2, 48)


def test_init_is_truncated_normal_with_zero_biases() -> None:
    torch.manual_seed(0)
    model = build(PRESETS["deit_tiny"], num_classes=10)
    fc1 = model.blocks[0].mlp.fc1.weight
    assert abs(fc1.std().item() - 0.02) < 0.004 and fc1.abs().max().item() <= 0.04
    assert model.blocks[3].attn.qkv.bias.abs().max() == 0
    assert (model.norm.weight == 1).all() and model.norm.bias.abs().max() == 0
    assert 0 < model.pos_embed.abs().max().item() <= 0.04


def test_safetensors_round_trip(tmp_path) -> None:
    config = SMALL.replace(attn="cga", sandwich=1)
    model = build(config, num_classes=10, in_chans=1)
    save_model(model, str(tmp_path / "model.safetensors"))
    other = build(config, num_classes=10, in_chans=1)
    load_model(other, str(tmp_path / "model.safetensors"))
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("changes", "words"), [
    ({"patch_size": 5}, ["`patch_size`=5", "`img_size`=224"]),
    ({"num_heads": 5}, ["`num_heads`=5", "`embed_dim`=192"]),
    ({"attn": "cga", "v_dim": 32}, ["`v_dim`=32", "64", "cga"]),
    ({"attn": "linear"}, ["`attn`='linear'", "mhsa", "cga"]),
    ({"token_policy": "pruned"}, ["`token_policy`='pruned'",
                                  "['static', 'halting', 'gating', 'cascade']"]),
    ({"depth": 0}, ["`depth`=0", ">= 1"]),
    ({"qk_dim": 0}, ["`qk_dim`=0"]),
    ({"sandwich": -1}, ["`sandwich`=-1", ">= 0"]),
    ({"embed_dim": True}, ["`embed_dim`=True", "integer"]),
    ({"mlp_ratio": 0.0}, ["`mlp_ratio`=0.0"]),
])
def test_config_errors_name_field_value_and_rule(changes: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        ViTConfig(**changes)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cga_accepts_v_dim_equal_to_split_and_int_ratio_keys_like_float() -> None:
    assert ViTConfig(attn="cga", v_dim=64).v_dim == 64
    assert ViTConfig(mlp_ratio=4).key() == ViTConfig(mlp_ratio=4.0).key()


# At 224 the default patch sizes 2 and 4 give too many tokens: a search there must narrow.
AT_224 = {"patch_size": Choice((7, 8, 14, 16))}


def test_default_dims_only_yield_valid_configs() -> None:
    check_dims(AT_224)  # 7 gives exactly MAX_TOKENS = 32 * 32 tokens
    check_dims({"img_size": Fixed(28), "patch_size": Choice((2, 4, 7, 14))})
    check_dims({"img_size": Fixed(28), "patch_size": Choice((4, 7))})  # 49 / 16 tokens


@pytest.mark.parametrize(("dims", "message"), [
    ({}, "space.dims: patch_size=2 at img_size=224 gives 12544 tokens (> 1024): narrow "
         "patch_size"),
    ({"patch_size": Choice((4, 16))}, "patch_size=4 at img_size=224 gives 3136 tokens"),
    ({"img_size": Fixed(112), "patch_size": Fixed(2)}, "patch_size=2 at img_size=112 gives "
                                                       "3136 tokens"),
])
def test_check_dims_rejects_patch_sizes_giving_too_many_tokens(dims: dict, message: str) -> None:
    assert MAX_TOKENS == 1024
    with pytest.raises(ConfigError) as err:
        check_dims(dims)
    assert message in str(err.value), str(err.value)


def test_token_limit_binds_search_domains_not_configs() -> None:
    config = ViTConfig(patch_size=4, depth=1)  # 3136 tokens: explicit configs stay allowed
    assert config.patch_size == 4 and ViTConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(("dims", "where"), [
    ({"img_size": Fixed(28), "patch_size": Choice((4, 8))}, "space.dims.patch_size"),
    ({"img_size": Choice((28, 32)), "patch_size": Choice((4, 7))}, "7 does not divide"),
    ({"embed_dim": Choice((48, 64)), "num_heads": Choice((2, 3))}, "space.dims.num_heads"),
    ({**AT_224, "v_dim": Choice((None, 0))}, "space.dims.v_dim"),
    ({"heads": Fixed(2)}, "['heads']"),
])
def test_check_dims_names_the_bad_dimension(dims: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=r"space\.dims") as err:
        check_dims(dims)
    assert where in str(err.value)


def test_suggest_draws_v_dim_only_for_mhsa() -> None:
    params = {name: dim.values()[0] for name, dim in DIMS.items()}
    mhsa = optuna.trial.FixedTrial({**params, "attn": "mhsa", "v_dim": 32})
    assert suggest(mhsa, DIMS).v_dim == 32
    cga = optuna.trial.FixedTrial({**params, "attn": "cga", "v_dim": 32})
    config = suggest(cga, DIMS)
    assert config.attn == "cga" and config.v_dim is None
    assert "v_dim" not in cga.params and cga.params["qk_dim"] == 8


def test_registry_entry_checks_dims_with_check_dims() -> None:
    space = search_spaces.get("vit")
    assert space.check_fn is check_dims
    with pytest.raises(ConfigError, match=r"space\.dims\.patch_size"):
        space.check_dims({"img_size": Fixed(28), "patch_size": Fixed(8)})
