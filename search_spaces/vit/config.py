"""The ``vit`` family's config: one isotropic ViT, its token policy and that policy's fields."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .. import policies
from ..config import Config, check, check_int
from ..layers.attention import ATTENTION_KINDS
from ..policies import TokenPolicy
from .model import segment_of

STATIC = "static"  # the token_policy of a model without one
TOKEN_POLICIES = (STATIC, *policies.names())
_INT_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "sandwich")
SEGMENTED = ("qk_dim", "v_dim", "mlp_ratio")  # per segment of depth, or one for all blocks
MAX_SEGMENTS = 4  # most segments of depth a search may give their own widths


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig(Config, *policies.field_mixins()):
    """One isotropic ViT. ``qk_dim``/``v_dim`` are per head; None means embed_dim // num_heads.
    ``qk_dim``, ``v_dim`` and ``mlp_ratio`` are one value for every block, or a tuple of one
    value per segment: ``len`` equal segments of depth (:func:`segment_of`), so that the
    widths may differ along the depth, as EfficientViT found they should.
    ``num_heads`` must divide ``embed_dim`` unless attn="mhsa" gives both widths explicitly
    (e.g. a head-pruned model, trainers/pruning.py).

    ``attn="cga"`` uses the input split embed_dim // num_heads as its value width, so v_dim
    must then be None or equal to it. ``sandwich=k`` puts k extra (LayerNorm + MLP) residual
    sub-blocks before the attention of every block (0 = the standard ViT block); each block
    then has one attention and k + 1 FFNs.

    ``token_policy``: "static" (every token passes every block) or the name of a token policy
    (search_spaces/policies/): "halting" (A-ViT, with the ``halt_*`` fields), "gating"
    (AdaViT, with the ``gate_*`` fields; needs depth >= 2) or "cascade" (DVT, with the
    ``cascade_*`` fields). Every policy's fields are fields of every config (a mixin each,
    from the registry); they matter, and count in :meth:`key`, only for the config's own
    policy.
    """

    KIND: ClassVar[str] = "vit"

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    qk_dim: int | None | tuple[int | None, ...] = None
    v_dim: int | None | tuple[int | None, ...] = None
    mlp_ratio: float | tuple[float, ...] = 4.0
    attn: str = "mhsa"
    sandwich: int = 0
    token_policy: str = "static"

    def __post_init__(self) -> None:
        for name in SEGMENTED:
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in _INT_FIELDS:
            check_int(name, getattr(self, name), 0 if name == "sandwich" else 1)
        self._check_segments()
        for name in ("qk_dim", "v_dim"):
            for value in self.per_segment(name):
                if value is not None:
                    check_int(name, value, 1)
        for ratio in self.per_segment("mlp_ratio"):
            check(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0,
                  f"`mlp_ratio`={self.mlp_ratio!r} must be a number > 0 (or one per segment)")
        self._check_relations()
        for policy in policies.POLICIES.values():  # every config has every policy's fields
            policy.check_fields(self)
        own = self.policy()
        if own is not None and own.check_config is not None:
            own.check_config(self)

    def segments(self) -> int:
        """How many equal segments of depth the widths are given for (1: one for all)."""
        lengths = [len(v) for v in (getattr(self, n) for n in SEGMENTED) if isinstance(v, tuple)]
        return max(lengths, default=1)

    def per_segment(self, name: str) -> tuple:
        """The value of field ``name`` (one of :data:`SEGMENTED`) for each segment."""
        value = getattr(self, name)
        return value if isinstance(value, tuple) else (value,) * self.segments()

    def block(self, b: int) -> dict[str, Any]:
        """Block ``b``'s ``qk_dim``, ``v_dim`` and ``mlp_ratio``: those of its segment
        (:func:`segment_of`)."""
        k = segment_of(b, self.depth, self.segments())
        return {name: self.per_segment(name)[k] for name in SEGMENTED}

    def _check_segments(self) -> None:
        lengths = {n: len(getattr(self, n)) for n in SEGMENTED if isinstance(getattr(self, n),
                                                                              tuple)}
        check(len(set(lengths.values())) <= 1, f"per-segment widths {lengths} must all give "
              "the same number of segments (a plain value applies to every segment)")
        check(all(n >= 1 for n in lengths.values()), "a per-segment width needs at least one "
              "value")
        check(self.segments() <= self.depth, f"{self.segments()} segments of widths need "
              f"`depth` >= {self.segments()}, got {self.depth}")

    def policy(self) -> TokenPolicy | None:
        """The config's token policy (search_spaces/policies/), None for a static one."""
        return None if self.token_policy == STATIC else policies.get(self.token_policy)

    def key_fields(self) -> tuple[str, ...]:
        """The base architecture's fields, ``token_policy`` and the fields of the config's own
        policy: other policies' fields do not change its model, nor its key (so adding a
        policy changes no config's key)."""
        others = policies.field_names()
        own = set() if self.policy() is None else set(self.policy().field_names())
        return tuple(f.name for f in dataclasses.fields(self)
                     if f.name not in others or f.name in own)

    def _check_relations(self) -> None:
        check(self.img_size % self.patch_size == 0,
              f"`patch_size`={self.patch_size} must divide `img_size`={self.img_size}")
        # explicit per-head widths free MHSA from the split (head-pruned models need that)
        free = self.attn == "mhsa" and None not in (*self.per_segment("qk_dim"),
                                                     *self.per_segment("v_dim"))
        check(free or self.embed_dim % self.num_heads == 0,
              f"`num_heads`={self.num_heads} must divide `embed_dim`={self.embed_dim} "
              "(unless attn='mhsa' with explicit qk_dim and v_dim)")
        for ratio in self.per_segment("mlp_ratio"):
            check(int(self.embed_dim * ratio) >= 1,
                  f"`mlp_ratio`={ratio} times `embed_dim`={self.embed_dim} must be >= 1")
        check(self.attn in ATTENTION_KINDS,
              f"`attn`={self.attn!r} is not known; allowed: {list(ATTENTION_KINDS)}")
        split = self.embed_dim // self.num_heads
        check(self.attn != "cga" or set(self.per_segment("v_dim")) <= {None, split},
              f"`v_dim`={self.v_dim} must be None or `embed_dim` // `num_heads`={split} "
              f"when `attn`='cga' (each head's output is added to the next head's input)")
        check(self.token_policy in TOKEN_POLICIES,
              f"`token_policy`={self.token_policy!r} is not known; allowed: "
              f"{list(TOKEN_POLICIES)}")


PRESETS: dict[str, ViTConfig] = {
    "deit_tiny": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "deit_small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
}
