"""ONNX export of static candidates: logits within 1e-4 of PyTorch in ONNX Runtime at any
batch size, BatchNorm folded, misfits refused with the difference, latency in the runtime."""

from __future__ import annotations

import onnx
import optuna
import pytest
import torch
from torch import nn

import search_spaces
from search_spaces.dims import Choice, Fixed
from trainers.onnx_export import (
    OnnxError,
    fold_batchnorm,
    measure_onnx_latency,
    to_onnx,
    verify,
)

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)
SHAPE = (1, 28, 28)
SMALL = {"efficientvit": {"img_size": Fixed(28), "stem_stride": Fixed(4),
                          "num_stages": Choice((1, 2)), "width_1": Choice((16, 32)),
                          "width_2": Choice((32, 48))},
         "vit": {"img_size": Fixed(28), "patch_size": Choice((4, 7)),
                 "embed_dim": Choice((48, 96)), "depth": Fixed(2),
                 "token_policy": Fixed("static")}}


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm statistics of its own (random init leaves them trivial)."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.1, generator=gen)
    return model.eval()


def _candidates():
    for name, dims in SMALL.items():
        space = search_spaces.get(name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
        for _ in range(2):
            yield name, space.suggest(study.ask(), dims)
    vit = search_spaces.get("vit")
    yield "vit", vit.config_cls(img_size=28, patch_size=7, embed_dim=48, depth=2,
                                num_heads=2, attn="cga", sandwich=1)


@pytest.mark.parametrize(("name", "config"), list(_candidates()),
                         ids=lambda v: v if isinstance(v, str) else v.key())
def test_random_candidates_round_trip_at_any_batch(name, config):
    space = search_spaces.get(name)
    torch.manual_seed(0)
    model = _trained_bn(space.build(config, num_classes=10, in_chans=1))
    graph = to_onnx(model, SHAPE)
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3, 8):  # the batch axis is dynamic
        assert verify(model, graph, torch.randn(batch, *SHAPE, generator=gen)) <= 1e-4
    ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert "BatchNormalization" not in ops  # folded


def test_the_deit_tiny_preset_round_trips():
    space = search_spaces.get("vit")
    model = space.build(space.presets["deit_tiny"], num_classes=1000, in_chans=3).eval()
    graph = to_onnx(model, (3, 224, 224))
    gen = torch.Generator().manual_seed(2)
    for batch in (1, 3):
        assert verify(model, graph, torch.randn(batch, 3, 224, 224, generator=gen)) <= 1e-4


def test_the_efficientvit_m0_preset_exports_with_batchnorm_folded():
    space = search_spaces.get("efficientvit")
    model = _trained_bn(space.build(space.presets["m0"], num_classes=1000, in_chans=3))
    folded = fold_batchnorm(model)
    assert isinstance(folded.head.bn, nn.Identity)  # the head's BN went into its Linear
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-4)
    graph = to_onnx(model, (3, 224, 224))
    assert verify(model, graph, x) <= 1e-4
    ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert "BatchNormalization" not in ops


def test_a_graph_that_computes_something_else_is_refused_with_the_difference():
    vit = search_spaces.get("vit")
    config = vit.config_cls(img_size=28, patch_size=7, embed_dim=48, depth=2, num_heads=2)
    torch.manual_seed(0)
    one = vit.build(config, num_classes=10, in_chans=1).eval()
    torch.manual_seed(1)
    other = vit.build(config, num_classes=10, in_chans=1).eval()
    graph = to_onnx(other, SHAPE)
    with pytest.raises(OnnxError, match=r"differ from PyTorch's by [0-9.e-]+ \(max abs, "
                                        r"allowed 0.0001\)"):
        verify(one, graph, torch.randn(2, *SHAPE))


def test_latency_in_onnx_runtime_has_its_provenance():
    vit = search_spaces.get("vit")
    model = vit.build(vit.config_cls(img_size=28, patch_size=7, embed_dim=48, depth=2,
                                     num_heads=2), num_classes=10, in_chans=1)
    graph = to_onnx(model.eval(), SHAPE)
    lat = measure_onnx_latency(graph, input_shape=SHAPE, batch_size=4, warmup=1, repeats=3,
                               rounds=2)
    assert 0 < lat.median_ms <= lat.p90_ms and lat.batch_size == 4
    prov = lat.provenance
    assert prov["runtime"] == "onnxruntime" and prov["provider"] == "CPUExecutionProvider"
    assert prov["threads"] == 1 and prov["runtime_version"]
