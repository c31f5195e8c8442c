"""Budget points: the token cost model against fvcore, and one model evaluated at K knobs."""

from __future__ import annotations

import pytest
import torch

from search_spaces.adaptive import ladder
from search_spaces.policies.halting import Halting, HaltingCost
from search_spaces.policies.token_cost import TokenCost
from search_spaces.vit import ViTConfig, build
from trainers.budget import at_knobs, budget_points, evaluate_point
from trainers.data import load_data
from trainers.loop import FitSettings, evaluate, fit
from trainers.losses import objective_for
from trainers.measure import count_macs, measure_latency

torch.set_num_threads(1)

SHAPE = (3, 12, 12)
TOKENS, DEPTH, DIM = 1 + 9, 4, 16


def tiny(**changes) -> ViTConfig:
    base = dict(img_size=12, patch_size=4, embed_dim=DIM, depth=DEPTH, num_heads=2,
                token_policy="halting", halt_beta=-2.0)
    return ViTConfig(**{**base, **changes})


def model_of(config: ViTConfig, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(config, num_classes=5, in_chans=3)


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", train_size=128, val_size=40, img_size=12, num_classes=5)


@pytest.fixture(scope="module")
def trained(data):
    """A halting model trained for a few steps: accuracy above chance, mixed halting depths."""
    config = tiny()
    model = model_of(config)
    settings = FitSettings(epochs=6, batch_size=16, lr=5e-3, warmup_epochs=0, label_smoothing=0.0)
    fit(model, data, settings, loss_fn=objective_for(config))
    return config, model.eval()


# ------------------------------------------------------------------------------ cost model
@pytest.mark.parametrize("sandwich", [0, 1])
@pytest.mark.parametrize("attn", ["mhsa", "cga"])
@pytest.mark.parametrize("policy", ["static", "halting"])
def test_token_cost_agrees_with_fvcore(policy: str, attn: str, sandwich: int) -> None:
    config = tiny(token_policy=policy, attn=attn, sandwich=sandwich)
    cost = TokenCost.of(model_of(config), SHAPE, count_macs)
    static = model_of(config.replace(token_policy="static"))
    assert cost.tokens == TOKENS and len(cost.linear) == len(cost.quadratic) == DEPTH
    assert cost.full() == pytest.approx(count_macs(static, SHAPE), abs=1e-6)
    for index, block in enumerate(static.blocks):
        a, b = cost.linear[index], cost.quadratic[index]
        assert b > 0  # attention over token pairs
        for n in (3, 10):
            assert a * n + b * n * n == pytest.approx(count_macs(block, (n, DIM)), abs=1e-6)


def test_token_cost_of_a_plain_block_by_hand() -> None:
    cost = TokenCost.of(model_of(tiny(token_policy="static")), SHAPE, count_macs)
    # fixed: patch conv 48 -> 16 at 9 patches, final LayerNorm (5 per element, fvcore) and the
    # head 16 -> 5, both on the class token only
    assert cost.fixed == 48 * 16 * 9 + 5 * 16 + 16 * 5 == 7072
    # per token: two LayerNorms, qkv 16 -> 48, proj 16 -> 16, fc1 16 -> 64, fc2 64 -> 16
    assert cost.linear == (2 * 5 * 16 + 16 * 48 + 16 * 16 + 2 * 16 * 64,) * DEPTH
    # per token pair: 2 heads x (q.k over 8 + attn.v over 8)
    assert cost.quadratic == (2 * (8 + 8),) * DEPTH


@pytest.mark.parametrize("training", [False, True])
def test_token_cost_of_leaves_the_model_mode_unchanged(training: bool) -> None:
    # count_macs restores the mode of the module it is given, but TokenCost.of hands it a
    # fresh _FullRun wrapper (in train mode): restoring the wrapper's mode switches an
    # eval-mode model to train mode, so a halting model then runs the masked path.
    model = model_of(tiny()).train(training)
    TokenCost.of(model, SHAPE, count_macs)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_per_image_cost_of_hand_token_counts() -> None:
    model = model_of(tiny(attn="cga", sandwich=1))
    cost = TokenCost.of(model, SHAPE, count_macs)
    counts = torch.tensor([[TOKENS] * DEPTH, [10, 5, 0, 0], [10, 7, 7, 2]])
    got = cost.tokens_cost(counts)
    assert torch.equal(HaltingCost(cost).per_image({"tokens_per_block": counts}), got)
    assert got.shape == (3,) and got.dtype == torch.float64
    hand = [cost.fixed + sum(a * n + b * n * n for a, b, n in
                             zip(cost.linear, cost.quadratic, row, strict=True))
            for row in counts.tolist()]
    torch.testing.assert_close(got, torch.tensor(hand, dtype=torch.float64), rtol=0, atol=1e-6)
    assert got[0].item() == pytest.approx(cost.full(), abs=1e-6)
    blocks = model.blocks  # the same numbers from fvcore, block by block
    assert got[1].item() == pytest.approx(
        cost.fixed + count_macs(blocks[0], (10, DIM)) + count_macs(blocks[1], (5, DIM)),
        abs=1e-6)
    assert got[0] > got[2] > got[1] > cost.fixed


# ---------------------------------------------------------------------------------- knobs
def test_default_knobs_ladder() -> None:
    assert ladder(0.01, 0.95, 5) == (0.01, 0.245, 0.48, 0.715, 0.95)
    assert ladder(0.01, 0.95, 1) == (0.01,)
    assert ladder(0.1, 0.5, 3) == (0.1, 0.3, 0.5)
    with pytest.raises(ValueError, match="points=0"):
        ladder(0.01, 0.95, 0)
    halting = Halting(tiny())  # the family's ladder: trained eps up to 0.95 by default
    assert halting.operating_points(5, {}) == [{"halt_eps": v} for v in
                                               (0.01, 0.245, 0.48, 0.715, 0.95)]
    assert halting.operating_points(3, {"halt_eps": 0.5}) == [
        {"halt_eps": 0.01}, {"halt_eps": 0.255}, {"halt_eps": 0.5}]


def test_at_knob_keeps_the_weights_and_changes_only_eps(trained) -> None:
    config, model = trained
    net = at_knobs("vit", config, model, {"halt_eps": 0.3}, num_classes=5, in_chans=3)
    assert not net.training and net.halting.eps == 0.3 and model.halting.eps == 0.01
    for (name, a), b in zip(model.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- budget points
def test_budget_points_rows(data, trained) -> None:
    config, model = trained
    knobs = (0.01, 0.3, 0.9)
    inputs = next(data.val_batches(8))[0]

    def measure(net):
        return measure_latency(net, input_shape=SHAPE, batch_size=4, warmup=1, repeats=2,
                               rounds=1, inputs=inputs)

    rows = budget_points("vit", config, model, data, knobs=[{"halt_eps": k} for k in knobs],
                         batch_size=16, measure=measure)
    full = count_macs(model_of(config.replace(token_policy="static")), SHAPE)
    assert [r["point"] for r in rows] == [0, 1, 2]
    assert [r["knobs"] for r in rows] == [{"halt_eps": k} for k in knobs]
    for row in rows:
        assert row["full_macs"] == pytest.approx(full, abs=1e-6)
        assert row["macs"] <= row["full_macs"]
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["tokens_kept"] <= 1.0
        assert 0 < row["latency_ms"] <= row["latency_p90_ms"]
        assert row["latency_spread"] >= 0
    assert rows[0]["accuracy"] > 0.3  # chance is 0.2: the model learned something
    assert rows[0]["tokens_kept"] < 1.0  # it halts already at the trained threshold
    kept = [r["tokens_kept"] for r in rows]
    assert kept[0] > kept[1] > kept[2] and rows[-1]["macs"] < 0.8 * rows[0]["macs"]
    for row, value in zip(rows, knobs, strict=True):  # each point is that knob's model
        net = at_knobs("vit", config, model, {"halt_eps": value}, num_classes=5, in_chans=3)
        val = evaluate(net, data.val_batches(16))
        assert row["accuracy"] == val["accuracy"]
        assert row["val_loss"] == pytest.approx(val["loss"], abs=1e-6)
    assert len({r["accuracy"] for r in rows}) > 1  # the points really differ


def test_budget_points_without_measure_have_no_latency(data, trained) -> None:
    config, model = trained
    half = [{"halt_eps": 0.5}]
    (row,) = budget_points("vit", config, model, data, knobs=half, batch_size=64)
    assert row["point"] == 0 and row["knobs"] == {"halt_eps": 0.5}
    assert "latency_ms" not in row
    cost = TokenCost.of(model, SHAPE, count_macs)  # a cost counted beforehand: the same row
    assert budget_points("vit", config, model, data, knobs=half, batch_size=64,
                         cost=HaltingCost(cost)) == [row]
    halved = TokenCost(fixed=cost.fixed / 2, linear=cost.linear, quadratic=cost.quadratic,
                       tokens=cost.tokens)  # and it is the cost that is used
    (other,) = budget_points("vit", config, model, data, knobs=half, batch_size=64,
                             cost=HaltingCost(halved))
    assert other["macs"] == pytest.approx(row["macs"] - cost.fixed / 2, abs=1e-6)


def test_evaluate_point_of_a_static_model_is_the_full_cost(data) -> None:
    model = model_of(tiny(token_policy="static")).eval()
    cost = HaltingCost(TokenCost.of(model, SHAPE, count_macs))
    point = evaluate_point(model, data, cost, batch_size=16)
    assert point["macs"] == cost.full() == pytest.approx(count_macs(model, SHAPE), abs=1e-6)
    assert "tokens_kept" not in point  # a static model reports no usage
    val = evaluate(model, data.val_batches(16))
    assert point["accuracy"] == val["accuracy"]


def test_evaluate_point_counts_the_tokens_really_run(data) -> None:
    # beta = 6: every class token halts after block 1 (h ~ 1), so only block 1 runs
    model = model_of(tiny(halt_beta=6.0)).eval()
    cost = HaltingCost(TokenCost.of(model, SHAPE, count_macs))
    point = evaluate_point(model, data, cost, batch_size=16)
    one_block = cost.tokens.fixed + count_macs(model.blocks[0], (TOKENS, DIM))
    assert point["macs"] == pytest.approx(one_block, abs=1e-6)
    assert point["tokens_kept"] == pytest.approx(1 / DEPTH, abs=1e-12)
    # beta = -30: nothing halts before the last block, the full cost
    model = model_of(tiny(halt_beta=-30.0)).eval()
    point = evaluate_point(model, data, cost, batch_size=16)
    assert point["macs"] == pytest.approx(cost.full(), abs=1e-6)
    assert point["tokens_kept"] == 1.0
