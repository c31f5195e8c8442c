"""Train one candidate: ``fit`` = epochs of ``train_one_epoch`` + ``evaluate`` on validation.

AdamW (timm's factory: no weight decay on biases, norms and what the model's
``no_weight_decay()`` names) with a per-iteration linear warm-up + cosine schedule,
label-smoothing cross-entropy, optional gradient clipping and bf16 autocast on CUDA. Progress
leaves through a ``report`` callback (Ray Tune's ``tune.report`` is wrapped by the caller;
this package knows nothing of Ray). Seeding model initialisation and dropout (the global RNG)
is the caller's job; ``fit`` seeds its own batch shuffling.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from search_spaces.config import Config, check
from search_spaces.output import ModelOutput, logits_of
from trainers.data import Batch, Data

LossFn = Callable[[torch.Tensor | ModelOutput, torch.Tensor], torch.Tensor]
AMP_MODES = ("auto", "bf16", "off")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; raised before that step updates the weights."""

    def __init__(self, *, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"non-finite training loss {loss} at epoch {epoch}, step {step} (1-based); "
            "lower `lr` or set `clip_grad`"
        )
        self.epoch, self.step, self.loss = epoch, step, loss

    def __reduce__(self) -> tuple:  # survives pickling across processes (e.g. Ray workers)
        return _rebuild_non_finite, (self.epoch, self.step, self.loss)


def _rebuild_non_finite(epoch: int, step: int, loss: float) -> NonFiniteLoss:
    return NonFiniteLoss(epoch=epoch, step=step, loss=loss)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitSettings(Config):
    """How to train. ``warmup_epochs`` may be fractional; the schedule steps per iteration.

    ``amp``: "auto" = bf16 autocast on CUDA and fp32 elsewhere, "bf16" = always, "off" = never.
    ``eval_batch_size`` None means 2 x ``batch_size``.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    clip_grad: float | None = None
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"
    eval_batch_size: int | None = None

    def __post_init__(self) -> None:
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            check(value >= 1, f"`{field}` must be >= 1, got {field}={value}", field=field)
        check(self.lr > 0, f"`lr` must be > 0, got lr={self.lr}", field="lr")
        check(
            0 <= self.min_lr <= self.lr,
            f"`min_lr` must be in [0, lr={self.lr}], got min_lr={self.min_lr}",
            field="min_lr",
        )
        for field in ("weight_decay", "warmup_epochs", "seed"):
            value = getattr(self, field)
            check(value >= 0, f"`{field}` must be >= 0, got {field}={value}", field=field)
        check(
            0 <= self.label_smoothing < 1,
            f"`label_smoothing` must be in [0, 1), got label_smoothing={self.label_smoothing}",
            field="label_smoothing",
        )
        check(
            self.clip_grad is None or self.clip_grad > 0,
            f"`clip_grad` must be None or > 0, got clip_grad={self.clip_grad}",
            field="clip_grad",
        )
        check(
            self.warmup_epochs < self.epochs,
            f"`warmup_epochs` must be < epochs={self.epochs}, got "
            f"warmup_epochs={self.warmup_epochs}",
            field="warmup_epochs",
        )
        check(self.amp in AMP_MODES, f"`amp` must be one of {AMP_MODES}, got amp={self.amp!r}",
              field="amp")
        check(
            self.eval_batch_size is None or self.eval_batch_size >= 1,
            f"`eval_batch_size` must be None or >= 1, got eval_batch_size={self.eval_batch_size}",
            field="eval_batch_size",
        )

    def eval_batch(self) -> int:
        """The evaluation batch size: ``eval_batch_size``, or 2 x ``batch_size``."""
        return self.eval_batch_size or 2 * self.batch_size

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        cuda = torch.device(self.device).type == "cuda"
        return torch.bfloat16 if self.amp == "bf16" or (self.amp == "auto" and cuda) else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitResult:
    """``history``: one metrics dict per epoch run (as reported); ``final``: the last one."""

    history: list[dict[str, Any]]
    train_time_s: float
    stopped_early: bool

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from lr/warmup_steps to ``lr``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """The default loss: cross-entropy (fp32) on the logits of a tensor or ModelOutput."""

    def loss(output: torch.Tensor | ModelOutput, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(output).float(), target, label_smoothing=label_smoothing)

    return loss


def fit(
    model: nn.Module,
    data: Data,
    settings: FitSettings,
    *,
    report: Callable[[dict[str, Any]], bool | None] | None = None,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 0,
) -> FitResult:
    """Train ``model`` in place on ``data.train``; evaluate on ``data.val`` after each epoch.

    ``report(metrics)`` gets {epoch (1-based), train_loss, val_loss, accuracy (val top-1,
    0..1), lr, epoch_time_s (training + validation)}; returning True stops training early.
    ``loss_fn(output, target)`` replaces the label-smoothing cross-entropy (e.g. to add the
    auxiliary losses of a dynamic family). Raises :class:`NonFiniteLoss`.

    To resume a run from a checkpoint, give its ``optimizer`` (built by
    :func:`build_optimizer` for ``model``, its state loaded) and the epochs already done as
    ``start_epoch``: batch order and learning rates depend only on the epoch and step, so
    the run continues as if never stopped.
    """
    model.to(settings.device)
    optimizer = optimizer or build_optimizer(model, settings)
    run_epoch = functools.partial(
        _run_epoch, model, data, optimizer, settings=settings,
        loss_fn=loss_fn or cross_entropy(settings.label_smoothing),
        schedule=_schedule(settings, data.train_steps(settings.batch_size)),
    )  # fmt: skip
    history: list[dict[str, Any]] = []
    start, stopped = time.perf_counter(), False
    for epoch in range(start_epoch, settings.epochs):
        history.append(run_epoch(epoch))
        if report is not None and report(dict(history[-1])) is True:
            stopped = True
            break
    return FitResult(
        history=history, train_time_s=time.perf_counter() - start, stopped_early=stopped
    )


def build_optimizer(model: nn.Module, settings: FitSettings) -> torch.optim.Optimizer:
    """AdamW with two groups: weight decay 0 for 1-D parameters and for the names (patterns)
    that ``model.no_weight_decay()`` returns, if it has one; ``settings.weight_decay`` else."""
    return create_optimizer_v2(
        model, opt="adamw", lr=settings.lr, weight_decay=settings.weight_decay,
        filter_bias_and_bn=True,
    )


def _run_epoch(
    model: nn.Module,
    data: Data,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    settings: FitSettings,
    loss_fn: LossFn,
    schedule: Callable[[int], float],
) -> dict[str, Any]:
    """Train epoch ``epoch`` (0-based), validate, and return its metrics."""
    epoch_start = time.perf_counter()
    batches = data.train_batches(settings.batch_size, epoch=epoch, seed=settings.seed)
    train_loss = train_one_epoch(
        model, batches, optimizer, schedule=schedule,
        start_step=epoch * data.train_steps(settings.batch_size), epoch=epoch + 1,
        loss_fn=loss_fn, clip_grad=settings.clip_grad, amp_dtype=settings.amp_dtype(),
    )  # fmt: skip
    val = evaluate(model, data.val_batches(settings.eval_batch()), amp_dtype=settings.amp_dtype())
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": val["loss"],
        "accuracy": val["accuracy"],
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time_s": time.perf_counter() - epoch_start,
    }


def _schedule(settings: FitSettings, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = round(settings.warmup_epochs * steps_per_epoch)
    total = settings.epochs * steps_per_epoch
    options = {"lr": settings.lr, "min_lr": settings.min_lr, "total_steps": total}
    return lambda step: lr_at(step, warmup_steps=warmup, **options)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    schedule: Callable[[int], float],
    start_step: int = 0,
    epoch: int = 1,
    loss_fn: LossFn | None = None,
    clip_grad: float | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """One pass over ``batches``; the lr of global step ``start_step + i`` is ``schedule(...)``.

    Returns the mean training loss. Checks every step's loss before the update, so a
    :class:`NonFiniteLoss` (naming ``epoch`` and the 1-based step) leaves the weights finite.
    """
    model.train()
    loss_fn = loss_fn or cross_entropy()
    device = _device_of(model)
    total, steps = 0.0, 0
    for x, y in batches:
        lr = schedule(start_step + steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with _autocast(device, amp_dtype):
            loss = loss_fn(model(x.to(device)), y.to(device))
        value = loss.item()  # one sync per step: the price of stopping on the bad step itself
        if not math.isfinite(value):
            raise NonFiniteLoss(epoch=epoch, step=steps + 1, loss=value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        total, steps = total + value, steps + 1
    if steps == 0:
        raise ValueError("train_one_epoch() got no batches")
    return total / steps


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    amp_dtype: torch.dtype | None = None,
    on_output: Callable[[torch.Tensor | ModelOutput], None] | None = None,
) -> dict[str, float]:
    """Top-1 accuracy (0..1), mean plain cross-entropy and example count ``n`` over ``batches``.

    Runs in eval mode under inference_mode and restores the model's previous mode.
    ``on_output`` sees each batch's raw output (e.g. to collect a dynamic model's aux).
    """
    was_training, device = model.training, _device_of(model)
    model.eval()
    loss_sum, correct, n = torch.zeros((), device=device), torch.zeros((), device=device), 0
    try:
        with torch.inference_mode(), _autocast(device, amp_dtype):
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                output = model(x)
                if on_output is not None:
                    on_output(output)
                logits = logits_of(output).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(dim=-1) == y).sum()
                n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got no examples")
    return {"accuracy": correct.item() / n, "loss": loss_sum.item() / n, "n": n}


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
