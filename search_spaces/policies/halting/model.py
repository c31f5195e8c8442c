"""A-ViT's halting ViT: the static ViT (search_spaces/vit/model.py) whose ``forward`` halts
tokens: the masked path in training mode, the token-removal path in eval mode
(search_spaces/policies/halting/act.py). It adds no parameters: its state dict is a static
ViT's.
"""

from __future__ import annotations

from typing import Any

import torch

from ...output import ModelOutput
from ...vit.model import VisionTransformer
from .act import forward_masked, forward_removal
from .fields import HaltingParams


class HaltingViT(VisionTransformer):
    """A-ViT: the static ViT whose ``forward`` halts tokens (``halting``: its settings). It
    returns ``ModelOutput`` (masked path in training, the removal path in eval);
    ``forward_full`` still runs every token through every block."""

    def __init__(self, *, halting: HaltingParams, **vit: Any) -> None:
        super().__init__(**vit)
        self.halting = halting

    def forward(self, x: torch.Tensor) -> ModelOutput:
        run = forward_masked if self.training else forward_removal
        cls, aux = run(self.blocks, self.embed(x), self.halting)
        return ModelOutput(self.head(self.norm(cls)), aux)
