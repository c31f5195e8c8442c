"""Warm start from trained weights: timm's DeiT state dict, our export folders, and the
errors that name the first tensor that does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import search_spaces
from search_spaces.vit import ViTConfig
from trainers.warmstart import InitError, plan, read_init, warm_start

torch.set_num_threads(1)
VIT = search_spaces.get("vit")
SMALL = ViTConfig(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def deit(tmp_path_factory):
    """timm's deit_tiny_patch16_224 (random weights: no hub here) written to safetensors."""
    import timm  # after search_spaces (its torchvision shim)

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    path = tmp_path_factory.mktemp("deit") / "deit_tiny.safetensors"
    save_file(_state(model), str(path))
    return model, path


def test_a_timm_deit_state_dict_fixes_the_vit_architecture(deit):
    _, path = deit
    init = read_init(path)
    assert init.export is None and len(init.sha256) == 64
    arch = init.architecture(VIT)
    shared = {"img_size": 224, "patch_size": 16, "embed_dim": 192, "depth": 12,
              "mlp_ratio": 4.0, "sandwich": 0, "attn": "mhsa", "qk_dim": None, "v_dim": None}
    per_segment = {f"{name}_{k}": shared[name] for name in ("qk_dim", "v_dim", "mlp_ratio")
                   for k in range(1, 5)}  # one width for every block: every segment's
    assert arch == {**shared, "segments": 1, **per_segment}


def test_our_vit_warm_started_from_deit_gives_timms_logits(deit):
    timm_model, path = deit
    ours = VIT.build(VIT.presets["deit_tiny"], num_classes=1000, in_chans=3).eval()
    assert plan(ours, read_init(path).shapes) == []  # every tensor comes from the file
    assert warm_start(ours, read_init(path)) == []
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_model(x), rtol=0, atol=2e-5)


def test_a_halting_child_keeps_every_tensor_of_its_static_parent(tmp_path):
    torch.manual_seed(0)
    parent = VIT.build(SMALL, num_classes=5, in_chans=1)
    path = tmp_path / "parent.safetensors"
    save_file(_state(parent), str(path))
    config = SMALL.replace(token_policy="halting", halt_beta=-5.0)
    torch.manual_seed(123)  # another seed: the child's own init differs everywhere
    child = VIT.build(config, num_classes=5, in_chans=1)
    assert warm_start(child, read_init(path), adaptive=VIT.adaptive(config)) == []
    for name, tensor in parent.state_dict().items():
        assert torch.equal(child.state_dict()[name], tensor), name


def test_mismatched_missing_and_unexpected_tensors_are_named(tmp_path):
    torch.manual_seed(0)
    state = _state(VIT.build(SMALL, num_classes=5, in_chans=1))
    model = VIT.build(SMALL, num_classes=10, in_chans=1)
    before = _state(model)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(InitError, match=r"^tensor 'head.weight' has shape \(5, 24\) in the "
                                        r"initial weights and \(10, 24\) in the candidate"):
        warm_start(model, read_init(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    fresh = warm_start(model, read_init(path), fresh=["head.*"])  # a new head, asked for
    assert fresh == ["head.weight", "head.bias"]
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"],
                       state["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.state_dict()["head.weight"], before["head.weight"])
    del state["blocks.1.mlp.fc2.bias"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(InitError, match="^tensor 'blocks.1.mlp.fc2.bias' .* not in the initial"):
        warm_start(VIT.build(SMALL, num_classes=5, in_chans=1), read_init(path))
    del state["extra.weight"]
    state["blocks.1.mlp.fc2.bias"] = torch.zeros(24)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(InitError, match="^tensor 'extra.weight' of the initial weights has no "
                                        "place in the candidate"):
        warm_start(VIT.build(SMALL, num_classes=5, in_chans=1), read_init(path))


def test_unreadable_init_paths(tmp_path):
    with pytest.raises(InitError, match="no export folder or .safetensors file"):
        read_init(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitError, match="not an export folder"):
        read_init(tmp_path / "empty")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InitError, match="not a readable safetensors file"):
        read_init(bad)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"space": "efficientvit", "config": {}}))
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(InitError, match="an export of space 'efficientvit', not 'vit'"):
        read_init(folder).architecture(VIT)
