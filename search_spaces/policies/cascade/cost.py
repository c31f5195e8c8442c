"""The cascade policy's cost model: the MACs of the stages each image ran."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...adaptive import Count


class _Prefix(nn.Module):
    """The first ``stages`` stages on every image, for counting their MACs."""

    def __init__(self, model: nn.Module, stages: int) -> None:
        super().__init__()
        self.model, self.stages = model, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # every stage's logits: a traced graph drops what no output needs (an exit's head)
        return torch.cat(self.model.forward_stages(x, self.stages), dim=-1)


@dataclasses.dataclass(frozen=True)
class CascadeCost:
    """MACs per image: the cumulative count of the stages it ran (reuse modules included),
    counted with the injected counter on the first k stages run in full."""

    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int], count: Count) -> CascadeCost:
        was_training = model.training
        try:
            return cls(tuple(float(count(_Prefix(model, k).train(was_training), input_shape))
                             for k in range(1, len(model.sizes) + 1)))
        finally:
            model.train(was_training)

    def full(self) -> float:
        return self.cumulative[-1]

    def per_image(self, aux: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stage = aux["cascade_exit"]
        return torch.tensor(self.cumulative, dtype=torch.float64, device=stage.device)[stage]

    def usage(self, aux: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per image: 1 for the stage it exited at (``exit_share_k``, k from 1)."""
        stage = aux["cascade_exit"]
        return {f"exit_share_{k + 1}": (stage == k).double()
                for k in range(len(self.cumulative))}
