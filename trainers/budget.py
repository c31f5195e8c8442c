"""Budget points: one trained adaptive model, many (accuracy, cost) operating points.

A halting ViT's threshold knob ``halt_eps`` can move at inference without retraining: a
larger eps halts tokens sooner. :func:`budget_points` evaluates a model at K values of the
knob on the validation split and returns, per point, the accuracy, the MACs the removal path
really executed per image (averaged over the split) and, when asked, the latency of that path
measured on real validation images.

MACs of a data-dependent run come from a token cost model (:class:`TokenCost`): fvcore
counts the model run in full once, and each block at 1 and 2 tokens, which fixes the block's
cost as ``a * n + b * n**2`` for n tokens (linear layers per token, attention per token pair;
the tests check the fit against fvcore at other token counts). An image's cost is then
``fixed + sum over blocks of a * n_l + b * n_l**2`` with n_l the tokens it ran through block
l; for a static model this is exactly fvcore's count of the full model. The count is per image
and independent of the batch: padding that a batched removal path runs beside shorter images
is not counted (it shows in the measured latency instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import search_spaces
from search_spaces.config import Config
from search_spaces.output import ModelOutput

from .data import Data
from .loop import evaluate
from .measure import Latency, count_macs

KNOB = "halt_eps"
MAX_EPS = 0.95  # the far end of the default threshold ladder (tokens halt almost at once)


def default_knobs(start: float, points: int, *, stop: float = MAX_EPS) -> tuple[float, ...]:
    """``points`` thresholds from the trained ``start`` (point 0) evenly up to ``stop``."""
    if points < 1:
        raise ValueError(f"points={points} must be >= 1")
    if points == 1:
        return (start,)
    step = (stop - start) / (points - 1)
    return tuple(round(start + i * step, 6) for i in range(points))


class _FullRun(nn.Module):
    """A ViT run statically (every token through every block), for counting its full cost."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_full(x)


@dataclasses.dataclass(frozen=True)
class TokenCost:
    """MACs of an isotropic ViT as a function of the tokens each block runs."""

    fixed: float  # patch embedding, final norm and head
    linear: tuple[float, ...]  # a_l per block
    quadratic: tuple[float, ...]  # b_l per block
    tokens: int  # tokens of the full model (class token included)

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int]) -> TokenCost:
        """Count with fvcore: the model in full, and each block at 1 and 2 tokens."""
        was_training = model.training
        try:  # the wrapper's mode is restored onto the model: keep the model's own
            full = count_macs(_FullRun(model).train(was_training), input_shape)
        finally:
            model.train(was_training)
        dim = model.cls_token.shape[-1]
        tokens = model.pos_embed.shape[1]
        linear, quadratic = [], []
        for block in model.blocks:
            one, two = count_macs(block, (1, dim)), count_macs(block, (2, dim))
            b = (two - 2 * one) / 2
            linear.append(one - b)
            quadratic.append(b)
        blocks = sum(a * tokens + b * tokens**2 for a, b in zip(linear, quadratic, strict=True))
        return cls(fixed=full - blocks, linear=tuple(linear), quadratic=tuple(quadratic),
                   tokens=tokens)

    def full(self) -> float:
        """MACs per image with every token through every block."""
        n = torch.full((1, len(self.linear)), self.tokens)
        return float(self.per_image(n)[0])

    def per_image(self, tokens_per_block: torch.Tensor) -> torch.Tensor:
        """MACs per image (B,) from the tokens each image ran through each block (B, L)."""
        n = tokens_per_block.double()
        a = torch.tensor(self.linear, dtype=torch.float64, device=n.device)
        b = torch.tensor(self.quadratic, dtype=torch.float64, device=n.device)
        return self.fixed + (n * a + n * n * b).sum(dim=1)


def at_knob(space: str, config: Config, model: nn.Module, value: float, *, num_classes: int,
            in_chans: int) -> nn.Module:
    """The same trained weights built with the knob at ``value`` (eval mode, same device)."""
    fam = search_spaces.get(space)
    net = fam.build(config.replace(**{KNOB: value}), num_classes=num_classes, in_chans=in_chans)
    net.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    return net.to(device).eval()


def evaluate_point(net: nn.Module, data: Data, cost: TokenCost, *,
                   batch_size: int) -> dict[str, float]:
    """Validation accuracy and loss, and the MACs and token share executed per image."""
    counts: list[torch.Tensor] = []

    def collect(output: torch.Tensor | ModelOutput) -> None:
        if isinstance(output, ModelOutput) and "tokens_per_block" in output.aux:
            counts.append(output.aux["tokens_per_block"].cpu())

    val = evaluate(net, data.val_batches(batch_size), on_output=collect)
    if counts:
        tokens = torch.cat(counts)
        macs = float(cost.per_image(tokens).mean())
        kept = float(tokens.double().sum(1).mean() / (cost.tokens * len(cost.linear)))
    else:
        macs, kept = cost.full(), 1.0
    return {"accuracy": val["accuracy"], "val_loss": val["loss"], "macs": macs,
            "tokens_kept": kept}


Measure = Callable[[nn.Module], Latency]


def budget_points(space: str, config: Config, model: nn.Module, data: Data, *,
                  knobs: Sequence[float], batch_size: int = 256,
                  measure: Measure | None = None,
                  cost: TokenCost | None = None) -> list[dict[str, Any]]:
    """Evaluate ``model`` at each knob value: one dict per point (``point`` = its index).

    ``measure(net)`` times each point's model (None: no latency); time it on real images
    (``measure_latency(..., inputs=...)``), as halting depends on the data. ``cost``: the
    model's :class:`TokenCost` if already counted.
    """
    shape = (data.in_chans, data.img_size, data.img_size)
    cost = cost or TokenCost.of(model, shape)
    points = []
    for index, value in enumerate(knobs):
        net = at_knob(space, config, model, value, num_classes=data.num_classes,
                      in_chans=data.in_chans)
        row: dict[str, Any] = {"point": index, KNOB: value, "full_macs": cost.full(),
                               **evaluate_point(net, data, cost, batch_size=batch_size)}
        if measure is not None:
            latency = measure(net)
            row.update(latency_ms=latency.median_ms, latency_p90_ms=latency.p90_ms,
                       latency_spread=latency.spread)
        points.append(row)
    return points
