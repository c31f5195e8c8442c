"""fit / train_one_epoch / evaluate on the synthetic dataset with tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from search_spaces import efficientvit, vit
from search_spaces.config import ConfigError
from search_spaces.output import ModelOutput
from trainers.data import load_data
from trainers.loop import (
    FitSettings,
    NonFiniteLoss,
    build_optimizer,
    evaluate,
    fit,
    lr_at,
    train_one_epoch,
)

SETTINGS = FitSettings(epochs=4, batch_size=32, lr=3e-3, warmup_epochs=1, label_smoothing=0.1)


def _mlp(seed: int = 0, in_features: int = 3 * 16 * 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", train_size=512, val_size=128)


def test_fit_learns_well_above_chance(data) -> None:
    result = fit(_mlp(), data, SETTINGS)
    accuracies = [h["accuracy"] for h in result.history]
    assert len(result.history) == 4 and not result.stopped_early
    assert result.final["accuracy"] > 0.5  # chance is 0.1
    assert accuracies[-1] > accuracies[0]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert set(result.final) == {"epoch", "train_loss", "val_loss", "accuracy", "lr",
                                 "epoch_time_s"}  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.train_time_s >= sum(h["epoch_time_s"] for h in result.history)


def _numbers(result) -> list[tuple[float, ...]]:
    return [(h["train_loss"], h["val_loss"], h["accuracy"], h["lr"]) for h in result.history]


def test_same_seed_and_init_give_identical_numbers(data) -> None:
    first = fit(_mlp(seed=1), data, SETTINGS)
    second = fit(_mlp(seed=1), data, SETTINGS)
    reshuffled = fit(_mlp(seed=1), data, SETTINGS.replace(seed=1))
    assert _numbers(first) == _numbers(second)
    assert first.final["train_loss"] == second.final["train_loss"]
    assert _numbers(first) != _numbers(reshuffled)  # the seed drives the batch order


def test_report_returning_true_stops_early(data) -> None:
    seen: list[dict] = []

    def report(metrics: dict) -> bool:
        seen.append(metrics)
        return metrics["epoch"] == 2

    result = fit(_mlp(), data, SETTINGS, report=report)
    assert result.stopped_early and len(result.history) == 2
    assert [m["epoch"] for m in seen] == [1, 2]
    assert 0.0 <= seen[0]["accuracy"] <= 1.0 and seen[0]["epoch_time_s"] > 0
    assert not fit(_mlp(), data, SETTINGS.replace(epochs=2), report=lambda m: None).stopped_early


class NaNAfter(nn.Module):
    """Passes its input through a Linear, but returns NaN from its ``bad_call``-th forward."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.body = _mlp()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.body(x)
        return out * float("nan") if self.calls == self.bad_call else out


def test_non_finite_loss_stops_on_that_step_and_names_it(data) -> None:
    model = NaNAfter(bad_call=3)
    with pytest.raises(NonFiniteLoss, match=r"nan at epoch 1, step 3") as info:
        fit(model, data, SETTINGS)
    assert (info.value.epoch, info.value.step) == (1, 3) and math.isnan(info.value.loss)
    assert isinstance(info.value, RuntimeError) and model.calls == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no update from NaN


def test_model_output_and_custom_loss_are_supported(data) -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()

        def forward(self, x: torch.Tensor) -> ModelOutput:
            logits = self.body(x)
            return ModelOutput(logits, {"usage": logits.abs().mean()})

    def loss_fn(output: ModelOutput, target: torch.Tensor) -> torch.Tensor:
        task = nn.functional.cross_entropy(output.logits, target)
        return task + 0.0 * output.aux["usage"]

    result = fit(Dynamic(), data, SETTINGS.replace(epochs=2), loss_fn=loss_fn)
    assert result.final["accuracy"] > 0.3


def test_evaluate_counts_accuracy_and_loss_exactly() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = nn.Parameter(torch.tensor([2.0, 0.0, 0.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(len(x), 3)

    y = torch.tensor([0, 0, 1, 2, 0])
    batches = [(torch.zeros(3, 1), y[:3]), (torch.zeros(2, 1), y[3:])]
    model = Constant().train()
    metrics = evaluate(model, batches)
    log_z = math.log(math.exp(2) + 2)
    expected = (3 * (log_z - 2) + 2 * log_z) / 5
    assert metrics["n"] == 5 and metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert model.training  # mode restored


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr() -> None:
    def lr(step: int) -> float:
        return lr_at(step, lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)

    assert [lr(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr(4) == pytest.approx(1.0)
    assert lr(9) == pytest.approx(0.55)  # half-way through the cosine
    assert lr(14) == pytest.approx(0.1) and lr(100) == pytest.approx(0.1)


def test_lr_reported_follows_the_schedule(data) -> None:
    settings = SETTINGS.replace(epochs=2, warmup_epochs=0, min_lr=1e-4)
    result = fit(_mlp(), data, settings)
    steps = data.train_steps(settings.batch_size)
    last_step = 2 * steps - 1
    expected = lr_at(last_step, lr=3e-3, min_lr=1e-4, warmup_steps=0, total_steps=2 * steps)
    assert result.final["lr"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"clip_grad": 0.0}, "clip_grad"),
        ({"amp": "fp8"}, "amp"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
    ],
)
def test_fit_settings_errors_name_the_field(changes, field) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        FitSettings(**changes)


def test_amp_is_bf16_on_cuda_only_by_default() -> None:
    assert FitSettings(device="cpu").amp_dtype() is None
    assert FitSettings(device="cuda").amp_dtype() is torch.bfloat16
    assert FitSettings(device="cuda", amp="off").amp_dtype() is None
    assert FitSettings(device="cpu", amp="bf16").amp_dtype() is torch.bfloat16


def test_gradient_clipping_bounds_the_update(data) -> None:
    batch = next(data.train_batches(32, epoch=0, seed=0))

    def update_norm(clip_grad: float | None) -> float:
        model = _mlp()
        before = [p.detach().clone() for p in model.parameters()]
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        train_one_epoch(model, [batch], sgd, schedule=lambda step: 1.0, clip_grad=clip_grad)
        pairs = zip(model.parameters(), before, strict=True)
        moved = sum(((p.detach() - b) ** 2).sum() for p, b in pairs)
        return math.sqrt(float(moved))

    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)  # SGD step = lr x clipped grad
    assert update_norm(None) > 0.01


def _decay_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each parameter's name -> the weight decay of its optimizer group."""
    group_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {name: group_of[id(p)] for name, p in model.named_parameters()}


def test_optimizer_does_not_decay_position_tables_biases_and_norms() -> None:
    settings = SETTINGS.replace(weight_decay=0.05)
    effvit = efficientvit.build(efficientvit.EfficientViTConfig(
        img_size=28, stem_stride=4, embed_dims=(16, 32), depths=(1, 1), num_heads=(1, 2),
        kernels=(3, 3)), num_classes=10)
    decay = _decay_of(effvit, build_optimizer(effvit, settings))
    biases = [n for n in decay if n.endswith("attention_biases")]
    assert len(biases) == 2 and all(decay[n] == 0.0 for n in biases)
    assert decay["head.linear.weight"] == 0.05 and decay["head.linear.bias"] == 0.0
    assert decay["head.bn.weight"] == 0.0
    small_vit = vit.build(vit.ViTConfig(img_size=28, patch_size=7, embed_dim=48, depth=1,
                                        num_heads=2), num_classes=10)
    decay = _decay_of(small_vit, build_optimizer(small_vit, settings))
    assert decay["pos_embed"] == 0.0 and decay["cls_token"] == 0.0
    assert decay["blocks.0.norm1.weight"] == 0.0 and decay["head.bias"] == 0.0
    assert decay["blocks.0.mlp.fc1.weight"] == 0.05 and decay["patch_embed.proj.weight"] == 0.05
