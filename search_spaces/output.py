"""What dynamic families return: logits plus named auxiliary tensors that losses read."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    aux: dict[str, torch.Tensor]


def logits_of(output: torch.Tensor | ModelOutput) -> torch.Tensor:
    """The logits of a static family's tensor output or a dynamic family's ModelOutput."""
    return output.logits if isinstance(output, ModelOutput) else output
