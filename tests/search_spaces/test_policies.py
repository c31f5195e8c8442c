"""The token-policy registry, the keys of ViT configs, and config.json files of earlier
versions."""

from __future__ import annotations

import dataclasses

import pytest

import search_spaces
from search_spaces import policies
from search_spaces.efficientvit import EfficientViTConfig
from search_spaces.vit import DIMS, VisionTransformer, ViTConfig, build

POLICY_PREFIXES = ("halt_", "gate_", "cascade_")
SMALL = dict(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=2)

# ViTConfig(token_policy="halting").to_dict() as written before the policies were packages
HALTING_JSON = {
    "cascade_scales": "0.5+0.7", "cascade_feature_reuse": True, "cascade_relation_reuse": True,
    "cascade_exit_1": 1.0, "cascade_exit_2": 1.0, "gate_kinds": "heads+branches+patches",
    "gate_head_target": 0.5, "gate_branch_target": 0.5, "gate_patch_target": 0.5,
    "gate_weight": 2.0, "gate_tau": 5.0, "gate_head_threshold": 0.5,
    "gate_branch_threshold": 0.5, "gate_patch_threshold": 0.6, "halt_gamma": 10.0,
    "halt_beta": -30.0, "halt_target": 0.6666666666666666, "halt_ponder": None,
    "halt_prior": 0.001, "halt_eps": 0.01, "img_size": 224, "patch_size": 16,
    "embed_dim": 192, "depth": 12, "num_heads": 3, "qk_dim": None, "v_dim": None,
    "mlp_ratio": 4.0, "attn": "mhsa", "sandwich": 0, "token_policy": "halting",
}
# the EfficientViT preset m0's to_dict(), as written then
M0_JSON = {"img_size": 224, "stem_stride": 16, "embed_dims": [64, 128, 192],
           "depths": [1, 2, 3], "num_heads": [4, 4, 4], "key_dim": 16, "v_ratio": 1.0,
           "ffn_ratio": 2.0, "sandwich": 1, "kernels": [5, 5, 5, 5], "window_size": 7}


def test_registry_lists_the_policies_in_their_order() -> None:
    assert policies.names() == ("halting", "gating", "cascade")
    assert search_spaces.get("vit").dims["token_policy"].values() == (
        "static", "halting", "gating", "cascade")
    assert policies.field_mixins() == tuple(type.mro(ViTConfig)[2:5])
    for policy in policies.POLICIES.values():
        assert set(policy.dims) == set(policy.field_names())  # every field is a knob
        assert set(policy.dims) <= set(DIMS)
        assert set(policy.budget_knobs) <= set(policy.field_names())


@pytest.mark.parametrize("name", ["halting", "gating", "cascade"])
def test_each_policy_builds_its_own_model_class(name: str) -> None:
    model = build(ViTConfig(**SMALL, token_policy=name), num_classes=3, in_chans=1)
    assert isinstance(model, VisionTransformer) and type(model) is not VisionTransformer
    assert type(model).__module__ == f"search_spaces.policies.{name}.model"
    static = build(ViTConfig(**SMALL), num_classes=3, in_chans=1)
    assert type(static) is VisionTransformer


def test_static_key_hashes_no_policy_field() -> None:
    config = ViTConfig()
    data = config.key_data()
    assert not [name for name in data if name.startswith(POLICY_PREFIXES)]
    assert data["token_policy"] == "static" and data["embed_dim"] == 192
    assert set(data) == {f.name for f in dataclasses.fields(config)} - policies.field_names()
    changed = config.replace(halt_eps=0.3, gate_head_target=0.3, cascade_scales="0.5")
    assert changed != config and changed.key() == config.key()
    assert config.replace(embed_dim=96).key() != config.key()


def test_policy_key_hashes_only_its_own_fields() -> None:
    halting = ViTConfig(token_policy="halting")
    assert {n for n in halting.key_data() if n.startswith(POLICY_PREFIXES)} == set(
        policies.get("halting").field_names())
    assert halting.replace(gate_kinds="heads", cascade_exit_1=0.5).key() == halting.key()
    assert halting.replace(halt_eps=0.3).key() != halting.key()
    gated = ViTConfig(token_policy="gating")
    assert gated.replace(halt_eps=0.3).key() == gated.key()
    assert gated.replace(gate_kinds="heads").key() != gated.key()
    assert len({ViTConfig(token_policy=p).key() for p in ("static", *policies.names())}) == 4


def test_other_families_hash_every_field() -> None:
    config = EfficientViTConfig()
    assert config.key_data() == config.to_dict()


@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("vit", HALTING_JSON, ViTConfig(token_policy="halting")),
    ("efficientvit", M0_JSON, search_spaces.get("efficientvit").presets["m0"]),
])
def test_config_json_of_earlier_versions_loads(kind: str, data: dict, expected) -> None:
    loaded = search_spaces.get(kind).config_from_dict(data)
    assert loaded == expected
    assert loaded.to_dict() == data
