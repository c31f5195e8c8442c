"""AdaViT gates: decisions, straight-through gradients, skipping == masking, the cost model
against fvcore's count of the equivalent smaller static model, and the usage losses."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Fixed
from search_spaces.output import ModelOutput
from search_spaces.policies.gating import SUBSETS, TARGETS, GateCost, Gating, gates
from search_spaces.vit import DIMS, Block, FFNBlock, ViTConfig, build, suggest
from trainers.losses import objective_for, usage_loss, usage_where_loss
from trainers.measure import count_macs, trace_macs
from trainers.warmstart import plan

IMG, PATCH, DIM, HEADS = 16, 4, 24, 3  # 16 patch tokens + the class token


def gated(kinds: str = "heads+branches+patches", **changes) -> ViTConfig:
    fields = {"img_size": IMG, "patch_size": PATCH, "embed_dim": DIM, "depth": 4,
              "num_heads": HEADS, "token_policy": "gating", "gate_kinds": kinds}
    return ViTConfig(**{**fields, **changes})


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gate weights large enough that images take different decisions."""
    g = torch.Generator().manual_seed(seed)
    for gate in model.gates:
        for kind in gates.KINDS:
            layer = getattr(gate, kind)
            if layer is not None:
                layer.weight.data = torch.randn(layer.weight.shape, generator=g)
                layer.bias.data = 0.5 * torch.randn(layer.bias.shape, generator=g)
    return model


def masked(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    tokens, aux = gates.forward_masked(model.blocks, model.gates, model.embed(x), model.gating,
                                       noisy=False)
    return model.forward_head(tokens), aux


# ------------------------------------------------------------------------------- decisions
def test_decisions_match_hand_computed_bits() -> None:
    gate = gates.BlockGates(2, 3, gates.KINDS)
    with torch.no_grad():
        gate.heads.weight.zero_()
        gate.heads.bias.copy_(torch.tensor([4.0, -1.0, 0.2]))  # sigmoid(b / 5): .69 .45 .51
        gate.branches.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        gate.branches.bias.zero_()
        gate.patches.weight.copy_(torch.tensor([[1.0, 0.0]]))
        gate.patches.bias.zero_()
    # class token (0.5, -2): attention on (0.5 > 0), FFN off; patches' channel 0: 1, 2.5, -1
    x = torch.tensor([[[0.5, -2.0], [1.0, 9.0], [2.5, 9.0], [-1.0, 9.0]]])
    bits = gates.decide(gate, x, gates.GateParams(), noisy=False)
    assert bits["heads"].tolist() == [[1.0, 0.0, 1.0]]
    assert bits["branches"].tolist() == [[1.0, 0.0]]
    # patch threshold 0.6: sigmoid(1 / 5) = .55 (off), sigmoid(2.5 / 5) = .62 (on), -1 off
    assert bits["patches"].tolist() == [[0.0, 1.0, 0.0]]
    higher = gates.decide(gate, x, gates.GateParams(heads=0.6), noisy=False)
    assert higher["heads"].tolist() == [[1.0, 0.0, 0.0]]  # a knob moves without retraining


def test_gumbel_bits_are_hard_with_the_soft_samples_gradient() -> None:
    logits = torch.tensor([0.3, -0.2, 2.0, -3.0], requires_grad=True)
    torch.manual_seed(5)
    bits = gates.gate_bits(logits, threshold=0.5, tau=5.0, noisy=True)
    torch.manual_seed(5)  # the same two Gumbel draws, by hand
    g1 = -torch.empty(4).exponential_().log()
    g2 = -torch.empty(4).exponential_().log()
    soft = torch.sigmoid((logits.detach() + g1 - g2) / 5.0)
    assert bits.tolist() == (soft > 0.5).float().tolist()
    bits.sum().backward()
    assert torch.allclose(logits.grad, soft * (1 - soft) / 5.0)


def test_straight_through_gradients_reach_every_gate() -> None:
    model = build(gated(), num_classes=5, in_chans=1).train()
    out = model(torch.randn(6, 1, IMG, IMG))
    assert isinstance(out, ModelOutput) and out.aux["gate_patches"].shape == (6, 3, 16)
    objective_for(gated())(out, torch.randint(0, 5, (6,))).backward()
    for gate in model.gates:
        for kind in gates.KINDS:
            assert getattr(gate, kind).weight.grad.abs().sum() > 0, kind


# ----------------------------------------------------------------------- skipping == masked
@pytest.mark.parametrize("attn,sandwich", [("mhsa", 0), ("cga", 0), ("mhsa", 1)])
@pytest.mark.parametrize("kinds", SUBSETS)
def test_skipping_gives_the_logits_of_masking(attn: str, sandwich: int, kinds: str) -> None:
    torch.manual_seed(0)
    model = randomise(build(gated(kinds, attn=attn, sandwich=sandwich), num_classes=5,
                            in_chans=1)).eval()
    x = torch.randn(9, 1, IMG, IMG)
    with torch.no_grad():
        out = model(x)
        ref, ref_aux = masked(model, x)
        one = model(x[:1])
    assert (out.logits - ref).abs().max() <= 1e-4
    assert (one.logits - ref[:1]).abs().max() <= 1e-4  # batch 1 too
    for key, value in ref_aux.items():
        assert torch.equal(out.aux[key], value)
    if "patches" in kinds:  # images really differ in what they run
        assert out.aux["gate_patches"].sum(-1).unique().numel() > 1


def test_skipping_equals_masking_after_training() -> None:
    torch.manual_seed(1)
    config = gated(gate_head_target=0.3, gate_branch_target=0.7, gate_patch_target=0.4)
    model = build(config, num_classes=4, in_chans=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    loss_fn = objective_for(config)
    x, y = torch.randn(32, 1, IMG, IMG), torch.randint(0, 4, (32,))
    for _ in range(25):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out, (ref, _) = model(x), masked(model, x)
    assert 0 < out.aux["gate_patches"].mean() < 1  # trained gates drop some tokens
    assert (out.logits - ref).abs().max() <= 1e-4


def test_gates_all_on_give_the_parents_logits() -> None:
    torch.manual_seed(0)
    config = gated()
    parent = build(ViTConfig(**{**config.to_dict(), "token_policy": "static"}), num_classes=5,
                   in_chans=1).eval()
    child = build(config, num_classes=5, in_chans=1).eval()
    fresh = plan(child, {k: v.shape for k, v in parent.state_dict().items()},
                 adaptive=Gating(config))
    assert fresh and all(name.startswith("gates.") for name in fresh)  # only the gates
    child.load_state_dict(parent.state_dict(), strict=False)
    x = torch.randn(4, 1, IMG, IMG)
    with torch.no_grad():  # fresh gates start on (bias 3): the child runs as its parent
        assert torch.allclose(child(x).logits, parent(x), atol=1e-5)


# -------------------------------------------------------------------------------- the cost
def block_macs(module: nn.Module, tokens: int) -> float:
    return count_macs(module, (tokens, DIM))


@pytest.mark.parametrize("sandwich", [0, 1])
def test_block_cost_equals_fvcore_of_the_equivalent_smaller_block(sandwich: int) -> None:
    model = build(gated(sandwich=sandwich), num_classes=5, in_chans=1)
    cost = GateCost.of(model, (1, IMG, IMG), count_macs, gates.KINDS)
    head = DIM // HEADS
    for n in (1, 5, 17):
        for k in range(1, HEADS + 1):  # k of H heads on: a block built with k heads
            smaller = Block(dim=DIM, num_heads=k, qk_dim=head, v_dim=head, mlp_ratio=4.0,
                            attn="mhsa", sandwich=sandwich)
            got = cost.block_cost(torch.tensor([[n]]), torch.tensor([[k]]), torch.ones(1, 1))
            assert float(got[0, 0]) == pytest.approx(block_macs(smaller, n))
        no_attention = block_macs(FFNBlock(DIM, 4.0), n) * (sandwich + 1)
        got = cost.block_cost(torch.tensor([[n]]), torch.tensor([[0]]), torch.ones(1, 1))
        assert float(got[0, 0]) == pytest.approx(no_attention)
        nothing = cost.block_cost(torch.tensor([[n]]), torch.tensor([[0]]), torch.zeros(1, 1))
        assert float(nothing[0, 0]) == 0.0


def test_full_cost_is_the_static_model_plus_its_gates() -> None:
    model = build(gated(), num_classes=5, in_chans=1)
    cost = GateCost.of(model, (1, IMG, IMG), count_macs, gates.KINDS)
    static = build(ViTConfig(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=4,
                             num_heads=HEADS), num_classes=5, in_chans=1)
    gate_macs = 3 * (DIM * HEADS + DIM * 2 + 16 * DIM)  # blocks 1..3: heads, branches, patches
    assert cost.full() == pytest.approx(count_macs(static, (1, IMG, IMG)) + gate_macs)


def traced_macs(model: nn.Module, x: torch.Tensor) -> float:
    """fvcore's count of the path ``model`` really runs on ``x`` (one image)."""
    return float(trace_macs(model, (x,)))


@pytest.mark.parametrize("attn", ["mhsa", "cga"])
@pytest.mark.parametrize("kinds", ["heads+branches+patches", "heads", "patches"])
def test_cost_per_image_equals_fvcore_of_what_ran(attn: str, kinds: str) -> None:
    torch.manual_seed(0)
    model = randomise(build(gated(kinds, attn=attn), num_classes=5, in_chans=1), seed=3).eval()
    cost = Gating(model_config := gated(kinds, attn=attn)).cost_model(model, (1, IMG, IMG),
                                                                      count_macs)
    assert model_config.gate_kinds == kinds
    x = torch.randn(6, 1, IMG, IMG)
    with torch.no_grad():
        per_image = cost.per_image(model(x).aux)
    if "patches" in kinds:
        assert per_image.unique().numel() > 1  # images differ
    assert (per_image < cost.full()).any()  # something is skipped
    for i in range(6):
        assert float(per_image[i]) == pytest.approx(traced_macs(model, x[i:i + 1]))
    assert (per_image <= cost.full()).all()


def test_usage_counts_what_the_bits_say() -> None:
    model = build(gated(), num_classes=5, in_chans=1)
    cost = GateCost.of(model, (1, IMG, IMG), count_macs, gates.KINDS)
    heads = torch.tensor([[[1.0, 0, 0], [1, 1, 1], [0, 0, 0]]])  # 3 gated blocks
    branches = torch.tensor([[[1.0, 1], [1, 0], [0, 1]]])  # attention off in block 3
    patches = torch.zeros(1, 3, 16)
    patches[0, 0, :8] = 1
    usage = cost.usage({"gate_heads": heads, "gate_branches": branches,
                        "gate_patches": patches})
    assert float(usage["usage_heads"][0]) == pytest.approx(4 / 6)  # blocks 1, 2 only
    assert float(usage["usage_branches"][0]) == pytest.approx(4 / 6)
    assert float(usage["usage_patches"][0]) == pytest.approx(8 / 48)


# ---------------------------------------------------------------------------- usage losses
def test_usage_losses_match_hand_values() -> None:
    bits = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # mean 0.75
    assert float(usage_loss(bits, target=0.5, weight=2.0)) == pytest.approx(0.5)
    assert float(usage_loss(bits, target=0.5, weight=2.0, power=2)) == pytest.approx(0.125)
    assert float(usage_loss(bits, target=0.75, weight=2.0)) == 0.0
    heads = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])  # (B=1, L=2, H=3)
    branches = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # attention off in block 2
    got = usage_where_loss(heads, branches, index=0, target=0.5, weight=2.0)
    assert float(got) == pytest.approx(2 * abs(2 / 3 - 0.5))  # block 1 alone counts
    assert float(usage_where_loss(heads, branches, index=0, target=2 / 3, weight=2.0)) == \
        pytest.approx(0.0, abs=1e-7)


def test_loss_terms_follow_the_gate_kinds() -> None:
    terms = Gating(gated(gate_head_target=0.3)).loss_terms()
    assert [(t.kind, t.inputs) for t in terms] == [
        ("usage_where", ("gate_heads", "gate_branches")), ("usage", ("gate_branches",)),
        ("usage", ("gate_patches",))]
    assert terms[0].options["target"] == 0.3 and terms[2].options["power"] == 2
    assert all(t.weight == 2.0 for t in terms)
    alone = Gating(gated("heads")).loss_terms()
    assert [(t.kind, t.options["power"]) for t in alone] == [("usage", 1)]


# --------------------------------------------------------------------------- knobs, config
def test_knobs_are_the_thresholds_of_the_kinds_present() -> None:
    adaptive = Gating(gated("heads+patches"))
    assert adaptive.knobs() == {"gate_head_threshold": 0.5, "gate_patch_threshold": 0.6}
    points = adaptive.operating_points(3, {"gate_patch_threshold": 0.8})
    assert points == [{"gate_head_threshold": 0.5, "gate_patch_threshold": 0.6},  # trained
                      {"gate_head_threshold": 0.55, "gate_patch_threshold": 0.7},
                      {"gate_head_threshold": 0.6, "gate_patch_threshold": 0.8}]  # default
    assert adaptive.with_knobs(points[2]).gate_patch_threshold == 0.8
    assert adaptive.is_added("gates.0.heads.weight") and not adaptive.is_added("blocks.0.x")


@pytest.mark.parametrize("changes,words", [
    ({"gate_kinds": "patches+heads"}, ["gate_kinds", "allowed"]),
    ({"gate_kinds": ""}, ["gate_kinds"]),
    ({"gate_patch_target": 1.2}, ["gate_patch_target", "(0, 1)"]),
    ({"gate_head_threshold": 0.0}, ["gate_head_threshold"]),
    ({"gate_tau": 0}, ["gate_tau", "> 0"]),
    ({"depth": 1}, ["depth", ">= 2", "gating"]),
])
def test_gate_fields_are_validated_naming_the_field(changes: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        gated(**changes)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_suggest_draws_the_targets_of_the_kinds_drawn() -> None:
    dims = {**DIMS, "img_size": Fixed(IMG), "patch_size": Choice((4,)),
            "token_policy": Choice(("gating",))}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        config = suggest(trial, dims)
        kinds = config.gate_kinds.split("+")
        seen.add(config.gate_kinds)
        drawn = {name for name in trial.params if name.endswith("_target")}
        assert drawn == {TARGETS[k] for k in kinds}
        study.tell(trial, 0.0)
    assert len(seen) > 3
    assert math.isclose(config.gate_tau, 5.0)
