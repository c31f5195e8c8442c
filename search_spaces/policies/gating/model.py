"""AdaViT's gated ViT: the static ViT (search_spaces/vit/model.py) with a gate per block.

The gates (search_spaces/policies/gating/gates.py) sit under ``gates.{i}`` for block i + 1
(block 0 always runs in full); the rest of the model is named exactly like a static ViT, so a
static parent's weights fit it (warm start: only ``gates.*`` start fresh).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...output import ModelOutput
from ...vit.model import VisionTransformer
from . import gates
from .fields import GateParams


class GatedViT(VisionTransformer):
    """The static ViT whose ``forward`` runs AdaViT's gates (``gating``: their settings). It
    returns ``ModelOutput``: the masked path (noisy bits) in training, the path that really
    skips in eval; ``forward_full`` still runs every block in full."""

    def __init__(self, *, gating: GateParams, **vit: Any) -> None:
        super().__init__(**vit, weight_init="skip")
        self.gating = gating
        self.gates = nn.ModuleList(gates.BlockGates(vit["embed_dim"], vit["num_heads"],
                                                    gating.kinds)
                                   for _ in range(vit["depth"] - 1))
        self.init_weights()
        for gate in self.gates:
            gate.reset()

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if self.training:
            tokens, aux = gates.forward_masked(self.blocks, self.gates, self.embed(x),
                                               self.gating, noisy=True)
        else:
            tokens, aux = gates.forward_skipping(self.blocks, self.gates, self.embed(x),
                                                 self.gating)
        return ModelOutput(self.forward_head(tokens), aux)
