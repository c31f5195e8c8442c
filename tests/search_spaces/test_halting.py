"""A-ViT token halting: ACT bookkeeping by hand, token removal == masking, config and suggest."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

import search_spaces.layers.ragged as ragged
from search_spaces.config import ConfigError
from search_spaces.output import ModelOutput
from search_spaces.policies.halting import (
    ActState,
    HaltingParams,
    act_step,
    forward_masked,
    forward_removal,
    halting_score,
)
from search_spaces.vit import DIMS, HALT_KNOBS, ViTConfig, build, suggest
from trainers.losses import objective_for

torch.set_num_threads(1)

TOKENS, DEPTH = 1 + (12 // 4) ** 2, 4  # class token + 9 patches, 4 blocks


def tiny(**changes) -> ViTConfig:
    base = dict(img_size=12, patch_size=4, embed_dim=16, depth=DEPTH, num_heads=2,
                token_policy="halting", halt_beta=-1.0)
    return ViTConfig(**{**base, **changes})


def model_of(config: ViTConfig, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return build(config, num_classes=5, in_chans=3)


def images(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def masked_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The masked (training) path run directly, with the model in eval mode."""
    with torch.no_grad():
        out, aux = forward_masked(model.blocks, model.embed(x), model.halting)
        return model.head(model.norm(out)), aux


def removal(model: nn.Module, x: torch.Tensor) -> ModelOutput:
    model.eval()
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------ ACT bookkeeping by hand
def run_act(hs: list[list[float]], eps: float) -> tuple[list[ActState], torch.Tensor, list]:
    """act_step over blocks; ``hs[l]`` are the h of the tokens (one image) at block l."""
    h0 = torch.tensor([hs[0]])
    state, running = ActState.start(h0[..., None]), torch.ones_like(h0, dtype=torch.bool)
    states, weights, masks = [], [], []
    for h in hs:
        state, weight, running = act_step(state, torch.tensor([h]), running, eps)
        states.append(state)
        weights.append(weight[0])
        masks.append(running[0].tolist())
    return states, torch.stack(weights), masks


def test_act_step_bookkeeping_matches_hand_values() -> None:
    # tokens A, B, C over 4 blocks, eps = 0.01 (halt once c >= 0.99); the last h is 1.
    #   A: h 0.995 | c 0.995 -> halts at block 1; weight R = 1; rho = 1 block + R 1 = 2
    #   B: h 0.25, 0.5, 0.75 | c 0.25, 0.75, 1.5 -> halts at block 3;
    #      weights 0.25, 0.5, R = 1 - 0.75 = 0.25, then 0; rho = 3 + 0.25 = 3.25
    #   C: h 0.125, 0.25, 0.5, 1 | c 0.125, 0.375, 0.875, 1.875 -> forced to halt at block 4;
    #      weights 0.125, 0.25, 0.5, R = 0.125; rho = 4 + 0.125 = 4.125
    # h of a halted token is ignored (A's 0.5s below count for nothing).
    hs = [[0.995, 0.25, 0.125], [0.5, 0.5, 0.25], [0.5, 0.75, 0.5], [1.0, 1.0, 1.0]]
    states, weights, masks = run_act(hs, eps=0.01)
    expected_weights = torch.tensor([[1.0, 0.25, 0.125],
                                     [0.0, 0.5, 0.25],
                                     [0.0, 0.25, 0.5],
                                     [0.0, 0.0, 0.125]])
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-7)
    torch.testing.assert_close(weights.sum(0), torch.ones(3), rtol=0, atol=1e-7)
    assert masks == [[False, True, True], [False, True, True], [False, False, True],
                     [False, False, False]]
    expected_c = [[0.995, 0.25, 0.125], [0.995, 0.75, 0.375], [0.995, 1.5, 0.875],
                  [0.995, 1.5, 1.875]]
    expected_r = [[1.0, 0.75, 0.875], [1.0, 0.25, 0.625], [1.0, 0.25, 0.125],
                  [1.0, 0.25, 0.125]]
    expected_rho = [[2.0, 1.0, 1.0], [2.0, 2.0, 2.0], [2.0, 3.25, 3.0], [2.0, 3.25, 4.125]]
    for state, c, r, rho in zip(states, expected_c, expected_r, expected_rho, strict=True):
        torch.testing.assert_close(state.c, torch.tensor([c]), rtol=0, atol=1e-7)
        torch.testing.assert_close(state.remainder, torch.tensor([r]), rtol=0, atol=1e-7)
        torch.testing.assert_close(state.rho, torch.tensor([rho]), rtol=0, atol=1e-7)


def test_act_step_halts_only_once_c_exceeds_one_minus_eps() -> None:
    # eps = 0.25: threshold 0.75, strict as in A-ViT (c > 1 - eps). Token 0: c = 0.5, then
    # exactly 0.75 -> runs on (weight h = 0.25, R = 0.25), halts at the last block with
    # weight R = 0.25 and rho = 3 + 0.25. Token 1: c = 0.5, 0.625 -> R = 0.375 at the end.
    states, weights, masks = run_act([[0.5, 0.5], [0.25, 0.125], [1.0, 1.0]], eps=0.25)
    assert masks[1] == [True, True]
    torch.testing.assert_close(weights[:, 0], torch.tensor([0.5, 0.25, 0.25]), rtol=0, atol=0)
    torch.testing.assert_close(weights[:, 1], torch.tensor([0.5, 0.125, 0.375]), rtol=0, atol=0)
    torch.testing.assert_close(states[-1].rho, torch.tensor([[3.25, 3.375]]), rtol=0, atol=0)


def test_halting_score_is_sigmoid_of_channel_zero_and_one_at_the_last_block() -> None:
    tokens = torch.tensor([[[0.3, 5.0], [-0.1, -7.0]]])  # (1, 2, 2): channel 1 is ignored
    h = halting_score(tokens, HaltingParams(gamma=10.0, beta=-2.0), last=False)
    # sigmoid(10 * 0.3 - 2) = sigmoid(1); sigmoid(10 * -0.1 - 2) = sigmoid(-3)
    expected = torch.tensor([[1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(3.0))]])
    torch.testing.assert_close(h, expected, rtol=0, atol=1e-7)
    assert h[0, 0].item() == pytest.approx(0.7310585786, abs=1e-7)
    torch.testing.assert_close(halting_score(tokens, HaltingParams(), last=True),
                               torch.ones(1, 2), rtol=0, atol=0)


# --------------------------------------------------- both paths on blocks with known outputs
class TableBlock(nn.Module):
    """Sets channel 0 of each token to a fixed value per token id (channel 1 holds id + 1),
    so that h = sigmoid(channel 0) follows a table whatever the packing of the tokens."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.register_buffer("values", torch.tensor(values))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = x[..., 1].round().long() - 1
        return torch.stack([self.values[ids], x[..., 1]], dim=-1)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# h per block for ids 0..5 = (image 0: class, token 1, token 2; image 1: class, token 1, 2)
TABLE_H = [[0.125, 0.995, 0.25, 0.75, 0.125, 0.125],
           [0.25, 0.5, 0.5, 0.5, 0.25, 0.25],
           [0.5, 0.5, 0.75, 0.5, 0.5, 0.5]]
LAST_X0 = [7.0, 7.0, 7.0, 7.0, 7.0, 7.0]  # the last block's h is 1 whatever channel 0 says


def table_run(run) -> tuple[torch.Tensor, dict]:
    blocks = [TableBlock([logit(p) for p in row]) for row in TABLE_H] + [TableBlock(LAST_X0)]
    tokens = torch.zeros(2, 3, 2)
    tokens[..., 1] = torch.arange(1, 7, dtype=torch.float32).view(2, 3)
    return run(blocks, tokens, HaltingParams(gamma=1.0, beta=0.0, eps=0.01))


@pytest.mark.parametrize("run", [forward_masked, forward_removal])
def test_both_paths_give_hand_computed_outputs(run) -> None:
    out, aux = table_run(run)
    # image 0, class token: h 0.125, 0.25, 0.5 -> halts at the last block, weights
    # 0.125, 0.25, 0.5, R = 0.125; token 1 halts at block 1; token 2 at block 3.
    # image 1, class token: h 0.75, 0.5 -> c = 1.25 halts at block 2, weights 0.75, R = 0.25.
    x0 = [0.125 * logit(0.125) + 0.25 * logit(0.25) + 0.5 * logit(0.5) + 0.125 * 7.0,
          0.75 * logit(0.75) + 0.25 * logit(0.5)]
    # channel 1 is id + 1 at every block: the weights sum to 1, so it comes out unchanged
    torch.testing.assert_close(out, torch.tensor([[x0[0], 1.0], [x0[1], 4.0]]),
                               rtol=0, atol=1e-6)
    expected_counts = torch.tensor([[3, 2, 2, 1], [3, 3, 0, 0]])
    assert torch.equal(aux["tokens_per_block"], expected_counts)
    if run is forward_removal:  # image 1's tokens leave with its class token, after block 2
        assert torch.equal(aux["halt_depth"], torch.tensor([[4, 1, 3], [2, 2, 2]]))
        return
    assert torch.equal(aux["halt_depth"], torch.tensor([[4, 1, 3], [2, 4, 4]]))
    torch.testing.assert_close(aux["rho"], torch.tensor([[4.125, 2.0, 3.25],
                                                         [2.25, 4.125, 4.125]]),
                               rtol=0, atol=1e-6)
    # per image, the mean over its 3 tokens of h given by running tokens at each block
    expected_distribution = torch.tensor([[0.125 + 0.995 + 0.25, 0.25 + 0.5, 0.5 + 0.75, 1.0],
                                          [1.0, 1.0, 1.0, 2.0]]) / 3
    torch.testing.assert_close(aux["halt_distribution"], expected_distribution,
                               rtol=0, atol=1e-6)


# ----------------------------------------------------------------- removal == masking, ViT
BETAS = (-30.0, -2.0, -1.0, 6.0)  # never halts, halts at mixed depths (2), all at block 1


def assert_removal_equals_masking(model: nn.Module, x: torch.Tensor) -> ModelOutput:
    expected, masked_aux = masked_logits(model, x)
    got = removal(model, x)
    assert (got.logits - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.aux["tokens_per_block"], masked_aux["tokens_per_block"])
    # the removal path stops counting an image's tokens when its class token halts
    depth = masked_aux["halt_depth"]
    assert torch.equal(got.aux["halt_depth"], torch.minimum(depth, depth[:, :1]))
    return got


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("sandwich", [0, 1])
@pytest.mark.parametrize("attn", ["mhsa", "cga"])
def test_removal_gives_the_logits_of_masking(attn: str, sandwich: int, beta: float) -> None:
    model = model_of(tiny(attn=attn, sandwich=sandwich, halt_beta=beta)).eval()
    for batch in (1, 7, 16):
        got = assert_removal_equals_masking(model, images(batch, seed=batch))
    counts = got.aux["tokens_per_block"]  # batch 16: the case does exercise its regime
    if beta == -30.0:
        assert (counts == TOKENS).all()
    elif beta == 6.0:
        assert (counts[:, 0] == TOKENS).all() and (counts[:, 1:] == 0).all()
    else:
        assert counts.sum(1).unique().numel() > 1 and (counts[:, 1:] < TOKENS).any()


@pytest.mark.parametrize("attn", ["mhsa", "cga"])
def test_removal_equals_masking_after_training(attn: str) -> None:
    config = tiny(attn=attn, sandwich=1, halt_beta=-2.0)
    model = model_of(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = objective_for(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(20):
        x, y = torch.randn(16, 3, 12, 12, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = max((v - before[k]).abs().max().item() for k, v in model.state_dict().items())
    assert moved > 1e-2
    got = assert_removal_equals_masking(model.eval(), images(16, seed=9))
    assert (got.aux["tokens_per_block"] < TOKENS).any()  # the trained model does halt


@pytest.mark.parametrize("attn", ["mhsa", "cga"])
def test_removal_without_halting_equals_the_static_model(attn: str) -> None:
    config = tiny(attn=attn, sandwich=1, halt_beta=-30.0)
    model = model_of(config).eval()
    static = build(config.replace(token_policy="static"), num_classes=5, in_chans=3).eval()
    static.load_state_dict(model.state_dict())
    x = images(7)
    with torch.no_grad():
        expected = static(x)
        logits, aux = forward_removal(model.blocks, model.embed(x), model.halting)
        logits = model.head(model.norm(logits))
    assert isinstance(expected, torch.Tensor)
    assert (logits - expected).abs().max().item() <= 1e-4
    assert expected.std().item() > 0.05  # not two near-zero outputs
    assert (aux["tokens_per_block"] == TOKENS).all()
    assert (aux["halt_depth"] == DEPTH).all()


def test_training_mode_returns_aux_and_gradients_reach_the_parameters() -> None:
    model = model_of(tiny()).train()
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert isinstance(out, ModelOutput) and out.logits.shape == (4, 5)
    shapes = {name: tuple(t.shape) for name, t in out.aux.items()}
    assert shapes == {"rho": (4, TOKENS), "halt_depth": (4, TOKENS),
                      "halt_distribution": (4, DEPTH), "tokens_per_block": (4, DEPTH)}
    assert (out.aux["rho"] >= 1).all() and (out.aux["rho"] <= DEPTH + 1).all()
    loss = objective_for(tiny())(out, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].mlp.fc2.weight.grad.abs().max() > 0
    # the ponder loss reaches the blocks through h and the remainders
    grads = {}
    for ponder in (0.0, 1.0):
        model.zero_grad()
        objective_for(tiny(halt_ponder=ponder, halt_prior=0.0))(model(x), y).backward()
        grads[ponder] = model.blocks[0].mlp.fc2.weight.grad.clone()
    assert (grads[1.0] - grads[0.0]).abs().max() > 1e-4


@pytest.mark.parametrize("attn", ["mhsa", "cga"])
def test_pad_split_grouping_does_not_change_the_logits(attn: str, monkeypatch) -> None:
    model = model_of(tiny(attn=attn, halt_beta=-1.0)).eval()
    x = images(16, seed=5)
    calls = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    runs = {}
    for split in (1.0, 0.0):
        monkeypatch.setattr(ragged, "PAD_SPLIT", split)
        calls.clear()
        runs[split] = (removal(model, x), len(calls))
    (whole, whole_calls), (parts, parts_calls) = runs[1.0], runs[0.0]
    counts = whole.aux["tokens_per_block"]
    assert counts.sum(1).unique().numel() > 2  # images halt at different depths
    assert whole_calls <= DEPTH < parts_calls  # one group per block vs. several
    assert (parts.logits - whole.logits).abs().max().item() <= 1e-5
    assert torch.equal(parts.aux["tokens_per_block"], counts)
    assert torch.equal(parts.aux["halt_depth"], whole.aux["halt_depth"])
    assert_removal_equals_masking(model, x)  # and the split run is still the masked one


def test_larger_eps_runs_fewer_tokens() -> None:
    x = images(32)
    totals = []
    for eps in (0.01, 0.1, 0.3, 0.5, 0.9):
        out = removal(model_of(tiny(halt_beta=-2.0, halt_eps=eps)), x)
        totals.append(out.aux["tokens_per_block"].sum(1))
    # per image on this data (a halt moves later tokens' states, so this is not a theorem
    # per image; over the batch it is what the budget ladder relies on)
    for fewer, more in zip(totals[1:], totals, strict=False):
        assert (fewer <= more).all()
    assert totals[-1].sum() < 0.5 * totals[0].sum()


# ------------------------------------------------------------------------- config, suggest
@pytest.mark.parametrize(("changes", "words"), [
    ({"halt_eps": 0}, ["`halt_eps`=0", "(0, 1)"]),
    ({"halt_eps": 1}, ["`halt_eps`=1", "(0, 1)"]),
    ({"halt_target": 0}, ["`halt_target`=0", "(0, 1]"]),
    ({"halt_gamma": 0}, ["`halt_gamma`=0", "> 0"]),
    ({"halt_ponder": -1}, ["`halt_ponder`=-1", ">= 0"]),
    ({"halt_prior": -0.5}, ["`halt_prior`=-0.5", ">= 0"]),
    ({"halt_beta": None}, ["`halt_beta`=None", "number"]),
    ({"halt_gamma": True}, ["`halt_gamma`=True", "number"]),
])
def test_halting_fields_are_validated_naming_the_field(changes: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        tiny(**changes)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_halting_config_round_trips_through_json() -> None:
    config = tiny(halt_gamma=5.0, halt_beta=-15.0, halt_target=0.5, halt_ponder=2e-3,
                  halt_prior=1e-2, halt_eps=0.2)
    again = ViTConfig.from_json(config.to_json())
    assert again == config and again.key() == config.key()
    assert again.halting_params() == HaltingParams(gamma=5.0, beta=-15.0, eps=0.2)
    assert config.replace(token_policy="static").halting_params() is None
    assert config.key() != config.replace(halt_eps=0.3).key()
    assert build(again, num_classes=5).halting == HaltingParams(gamma=5.0, beta=-15.0, eps=0.2)


def test_suggest_draws_halting_knobs_only_for_halting() -> None:
    params = {name: dim.values()[0] for name, dim in DIMS.items()}
    static = optuna.trial.FixedTrial({**params, "token_policy": "static"})
    config = suggest(static, DIMS)
    assert config.token_policy == "static" and config.halting_params() is None
    assert not any(name in static.params for name in HALT_KNOBS)
    assert config.halt_beta == ViTConfig().halt_beta  # defaults, not the trial's values
    drawn = {"halt_gamma": 10.0, "halt_beta": -5.0, "halt_target": 0.83, "halt_ponder": 1e-2,
             "halt_prior": 1e-3}
    trial = optuna.trial.FixedTrial({**params, "token_policy": "halting", **drawn})
    config = suggest(trial, DIMS)
    assert config.token_policy == "halting"
    assert {name: getattr(config, name) for name in drawn} == drawn
    assert {name: trial.params[name] for name in drawn} == drawn
    assert config.halt_eps == 0.01 and "halt_eps" not in trial.params  # fixed, not drawn
