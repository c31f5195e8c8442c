"""Isotropic vision transformer (ViT / DeiT) with EfficientViT block options.

- "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
  Dosovitskiy et al., ICLR 2021, https://arxiv.org/abs/2010.11929
- "Training data-efficient image transformers & distillation through attention",
  Touvron et al., ICML 2021, https://arxiv.org/abs/2012.12877

Patch embedding (a stride-``patch`` conv), a class token, a learned absolute position
embedding over 1 + N tokens, ``depth`` pre-norm blocks, a final LayerNorm and a Linear head on
the class token. Module names follow timm's ``VisionTransformer``, so the ``deit_tiny`` and
``deit_small`` presets have timm's parameter counts and load timm's state dicts unchanged.

Search options beyond DeiT (PAPERS.md section 1): per-head Q/K and V widths, cascaded group
attention (``attn="cga"``) and the "sandwich" layout (``sandwich=k``: k extra FFN sub-blocks
before each attention, raising the FFN share of the network as EfficientViT found useful).
Token policies wrap the block loop: ``token_policy="halting"`` is A-ViT's adaptive token
halting (search_spaces/halting.py); such a model returns ``ModelOutput(logits, aux)`` and runs
the masked path in training mode and the token-removal path in eval mode;
``token_policy="gating"`` is AdaViT's usage gates for heads, branches and patch tokens
(search_spaces/gates.py, its contract in search_spaces/gating.py), masked in training and
really skipping in eval mode; ``token_policy="cascade"`` is DVT's cascade of stages with
increasing token grids and early exit (search_spaces/dvt.py, its contract in
search_spaces/cascading.py). Blocks take ``forward(x, mask=None)`` and expose their two
residual branches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from . import cascading, gates, gating, halting
from .adaptive import Adaptive
from .cascading import CascadeFields
from .config import Config, ConfigError, check, check_int
from .dims import Choice, Dim, Fixed, IntRange, TrialLike
from .gates import BlockGates, GateParams
from .gating import GateFields
from .halting import HaltingFields, HaltingParams, forward_masked, forward_removal
from .layers.attention import ATTENTION_KINDS, build_attention
from .layers.mlp import Mlp
from .output import ModelOutput
from .registry import SearchSpace, register
from .vit_weights import architecture_of_weights

# token_policy -> its side of the adaptive contract (search_spaces/adaptive.py); None: static
POLICIES: dict[str, type[Adaptive] | None] = {"static": None, "halting": halting.Halting,
                                              "gating": gating.Gating,
                                              "cascade": cascading.Cascade}
TOKEN_POLICIES = tuple(POLICIES)
LN_EPS = 1e-6  # timm's ViT LayerNorm epsilon
MAX_TOKENS = 1024  # most patch tokens a search domain may give (attention memory ~ tokens^2)


# ---------------------------------------------------------------------------------- blocks
class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, C, H, W) -> (B, H/p * W/p, dim)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FFNBlock(nn.Module):
    """A residual FFN sub-block: x + mlp(norm(x)) (the extra FFNs of a sandwich block)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Block(nn.Module):
    """``sandwich`` FFN sub-blocks, then x + attn(norm1(x)), then x + mlp(norm2(x)).

    With ``sandwich=0`` this is timm's pre-norm ViT block (same parameter names). The two
    residual branches are separate methods so that a gating policy can scale them.
    """

    def __init__(self, *, dim: int, num_heads: int, qk_dim: int | None, v_dim: int | None,
                 mlp_ratio: float, attn: str, sandwich: int) -> None:
        super().__init__()
        self.pre_ffns = nn.ModuleList(FFNBlock(dim, mlp_ratio) for _ in range(sandwich))
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = build_attention(attn, dim, num_heads, qk_dim=qk_dim, v_dim=v_dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def attn_branch(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attn(self.norm1(x), mask)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for ffn in self.pre_ffns:
            x = ffn(x)
        x = x + self.attn_branch(x, mask)
        return x + self.mlp_branch(x)


# ----------------------------------------------------------------------------------- model
class VisionTransformer(nn.Module):
    """Class-token ViT: ``embed`` -> blocks -> ``forward_head``; ``forward`` returns logits."""

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, num_classes: int,
                 embed_dim: int, depth: int, num_heads: int, qk_dim: int | None,
                 v_dim: int | None, mlp_ratio: float, attn: str, sandwich: int,
                 halting: HaltingParams | None = None,
                 gating: GateParams | None = None) -> None:
        super().__init__()
        self.halting = halting
        self.gating = gating
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, qk_dim=qk_dim, v_dim=v_dim,
                  mlp_ratio=mlp_ratio, attn=attn, sandwich=sandwich)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        if gating is not None:  # block 0 always runs in full: gates from block 1 on
            self.gates = nn.ModuleList(BlockGates(embed_dim, num_heads, gating.kinds)
                                       for _ in range(depth - 1))
        init_weights(self)
        for gate in getattr(self, "gates", ()):
            gate.reset()

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer must not decay (as timm's ``VisionTransformer``)."""
        return {"pos_embed", "cls_token"}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, 1 + N, dim), class token first."""
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits from the class token (LayerNorm acts per token: norming it alone suffices)."""
        return self.head(self.norm(tokens[:, 0]))

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with every token through every block (a static model's forward; for a
        halting model, its weights run without halting)."""
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.forward_head(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor | ModelOutput:
        """Logits; with a token policy, ``ModelOutput`` (masked path in training, the path
        that really skips in eval)."""
        if self.gating is not None:
            if self.training:
                tokens, aux = gates.forward_masked(self.blocks, self.gates, self.embed(x),
                                                   self.gating, noisy=True)
            else:
                tokens, aux = gates.forward_skipping(self.blocks, self.gates, self.embed(x),
                                                     self.gating)
            return ModelOutput(self.forward_head(tokens), aux)
        if self.halting is None:
            return self.forward_full(x)
        run = forward_masked if self.training else forward_removal
        cls, aux = run(self.blocks, self.embed(x), self.halting)
        return ModelOutput(self.head(self.norm(cls)), aux)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Truncated normal (std, cut at 2 std) for Linear weights, position and class tokens;
    zero biases; LayerNorm ones/zeros. The patch conv keeps PyTorch's init (as timm does)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for name in ("pos_embed", "cls_token"):
        param = getattr(model, name, None)
        if isinstance(param, nn.Parameter):
            nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)


# -------------------------------------------------------------------------- config, presets
_INT_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "sandwich")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig(Config, HaltingFields, GateFields, CascadeFields):
    """One isotropic ViT. ``qk_dim``/``v_dim`` are per head; None means embed_dim // num_heads.
    ``num_heads`` must divide ``embed_dim`` unless attn="mhsa" gives both widths explicitly
    (e.g. a head-pruned model, trainers/pruning.py).

    ``attn="cga"`` uses the input split embed_dim // num_heads as its value width, so v_dim
    must then be None or equal to it. ``sandwich=k`` puts k extra (LayerNorm + MLP) residual
    sub-blocks before the attention of every block (0 = the standard ViT block); each block
    then has one attention and k + 1 FFNs.

    ``token_policy``: "static" (every token passes every block), "halting" (A-ViT, with the
    ``halt_*`` fields of :class:`~search_spaces.halting.HaltingFields`) or "gating" (AdaViT,
    with the ``gate_*`` fields of :class:`~search_spaces.gating.GateFields`; needs depth >= 2)
    or "cascade" (DVT, with the ``cascade_*`` fields of
    :class:`~search_spaces.cascading.CascadeFields`).
    """

    KIND: ClassVar[str] = "vit"

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    qk_dim: int | None = None
    v_dim: int | None = None
    mlp_ratio: float = 4.0
    attn: str = "mhsa"
    sandwich: int = 0
    token_policy: str = "static"

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            check_int(name, getattr(self, name), 0 if name == "sandwich" else 1)
        for name in ("qk_dim", "v_dim"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        check(isinstance(self.mlp_ratio, (int, float)) and not isinstance(self.mlp_ratio, bool)
              and self.mlp_ratio > 0, f"`mlp_ratio`={self.mlp_ratio!r} must be a number > 0")
        self._check_relations()
        self._check_halting()
        self._check_gates()
        self._check_cascade(self.img_size // self.patch_size, self.token_policy == "cascade")
        check(self.token_policy != "gating" or self.depth >= 2,
              f"`depth`={self.depth} must be >= 2 with token_policy='gating' (block 0 runs in "
              "full, the gates act from block 1 on)")

    def halting_params(self) -> HaltingParams | None:
        """The model's halting settings, or None for a static model."""
        return HaltingFields.halting_params(self) if self.token_policy == "halting" else None

    def gating_params(self) -> GateParams | None:
        """The model's gate settings, or None for an ungated model."""
        return GateFields.gate_params(self) if self.token_policy == "gating" else None

    def _check_relations(self) -> None:
        check(self.img_size % self.patch_size == 0,
              f"`patch_size`={self.patch_size} must divide `img_size`={self.img_size}")
        # explicit per-head widths free MHSA from the split (head-pruned models need that)
        free = self.attn == "mhsa" and self.qk_dim is not None and self.v_dim is not None
        check(free or self.embed_dim % self.num_heads == 0,
              f"`num_heads`={self.num_heads} must divide `embed_dim`={self.embed_dim} "
              "(unless attn='mhsa' with explicit qk_dim and v_dim)")
        check(int(self.embed_dim * self.mlp_ratio) >= 1,
              f"`mlp_ratio`={self.mlp_ratio} times `embed_dim`={self.embed_dim} must be >= 1")
        check(self.attn in ATTENTION_KINDS,
              f"`attn`={self.attn!r} is not known; allowed: {list(ATTENTION_KINDS)}")
        split = self.embed_dim // self.num_heads
        check(self.attn != "cga" or self.v_dim in (None, split),
              f"`v_dim`={self.v_dim} must be None or `embed_dim` // `num_heads`={split} "
              f"when `attn`='cga' (each head's output is added to the next head's input)")
        check(self.token_policy in TOKEN_POLICIES,
              f"`token_policy`={self.token_policy!r} is not known; allowed: "
              f"{list(TOKEN_POLICIES)}")


PRESETS: dict[str, ViTConfig] = {
    "deit_tiny": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "deit_small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
}


# ------------------------------------------------------------------------------------ dims
# Every width is a multiple of 12, so every head count divides every width; every patch size
# divides 224, but 2 and 4 give too many tokens there (> MAX_TOKENS): they are for small
# images, and a search at 224 must narrow patch_size. v_dim None means embed_dim // num_heads;
# it is drawn only for attn="mhsa". A token policy's own knobs are drawn only for it.
DIMS: dict[str, Dim] = {
    "img_size": Fixed(224),
    "patch_size": Choice((2, 4, 7, 8, 14, 16)),
    "embed_dim": Choice((48, 96, 144, 192, 240, 288, 384)),
    "depth": IntRange(2, 12),
    "num_heads": Choice((1, 2, 3, 4, 6)),
    "qk_dim": Choice((8, 16, 32, 64)),
    "v_dim": Choice((None, 16, 32, 64)),
    "mlp_ratio": Choice((2.0, 3.0, 4.0)),
    "attn": Choice(("mhsa", "cga")),
    "sandwich": Choice((0, 1)),
    "token_policy": Choice(TOKEN_POLICIES),
    **halting.DIMS,
    **gating.DIMS,
    **cascading.DIMS,
}
# what trained weights fix (warm start): every knob but the token policy and its own knobs
ARCHITECTURE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "qk_dim", "v_dim",
                "mlp_ratio", "attn", "sandwich")
POLICY_SUGGEST = {"halting": halting.suggest, "gating": gating.suggest,
                  "cascade": cascading.suggest}
HALT_KNOBS = tuple(halting.DIMS)  # the halting policy's own knobs


def check_dims(dims: Mapping[str, Dim]) -> None:
    """Raise ConfigError naming the dimension if some draw from ``dims`` (merged over DIMS)
    would be an invalid config: a patch size not dividing an image size, a head count not
    dividing a width, or a value that breaks a rule of its own field; or an image and patch
    size giving more than MAX_TOKENS tokens (a rule of search domains only: configs may)."""
    unknown = sorted(set(dims) - set(DIMS))
    if unknown:
        raise ConfigError(f"space.dims: {unknown} are not dimensions of 'vit'; "
                          f"known: {sorted(DIMS)}")
    merged = {**DIMS, **dims}
    _check_divides(merged, "patch_size", "img_size")
    _check_divides(merged, "num_heads", "embed_dim")
    _check_tokens(merged)
    if "cascade" in merged["token_policy"].values():
        cascading.check_dims(merged)
    if "gating" in merged["token_policy"].values() and min(merged["depth"].values()) < 2:
        raise ConfigError(f"space.dims.depth: {min(merged['depth'].values())} blocks cannot be "
                          "gated (token_policy 'gating' needs depth >= 2): raise depth or "
                          "drop 'gating'")
    base = {name: dim.values()[0] for name, dim in merged.items()}
    for name, dim in merged.items():
        for value in dim.values():
            values = {**base, name: value}
            if name == "v_dim":
                values["attn"] = "mhsa"  # v_dim is drawn only for mhsa
            elif values["attn"] != "mhsa":
                values["v_dim"] = None
            try:
                ViTConfig(**values)
            except ConfigError as err:
                raise ConfigError(f"space.dims.{name}: value {value!r} gives an invalid "
                                  f"config: {err}") from None


def _check_divides(dims: Mapping[str, Dim], small: str, big: str) -> None:
    for b in dims[big].values():
        for s in dims[small].values():
            if not isinstance(s, int) or not isinstance(b, int) or s < 1 or b % s:
                raise ConfigError(f"space.dims.{small}: {s!r} does not divide {big}={b!r}; "
                                  f"every {small} choice must divide every {big} choice")


def _check_tokens(dims: Mapping[str, Dim]) -> None:
    """Every (img_size, patch_size) pair must give at most MAX_TOKENS patch tokens (call after
    :func:`_check_divides`, which makes both positive ints)."""
    for img in dims["img_size"].values():
        for patch in dims["patch_size"].values():
            tokens = (img // patch) ** 2
            if tokens > MAX_TOKENS:
                raise ConfigError(f"space.dims: patch_size={patch} at img_size={img} gives "
                                  f"{tokens} tokens (> {MAX_TOKENS}): narrow patch_size")


# --------------------------------------------------------------------------- suggest, build
def suggest(trial: TrialLike, dims: Mapping[str, Dim]) -> ViTConfig:
    """Draw one config. Conditional knobs: ``v_dim`` is drawn only when attn is "mhsa", a
    token policy's own knobs (e.g. ``halt_*``) only for that policy."""
    attn = dims["attn"].suggest(trial, "attn")
    policy = dims["token_policy"].suggest(trial, "token_policy")
    own = POLICY_SUGGEST[policy](trial, dims) if policy in POLICY_SUGGEST else {}
    return ViTConfig(
        img_size=dims["img_size"].suggest(trial, "img_size"),
        patch_size=dims["patch_size"].suggest(trial, "patch_size"),
        embed_dim=dims["embed_dim"].suggest(trial, "embed_dim"),
        depth=dims["depth"].suggest(trial, "depth"),
        num_heads=dims["num_heads"].suggest(trial, "num_heads"),
        qk_dim=dims["qk_dim"].suggest(trial, "qk_dim"),
        v_dim=dims["v_dim"].suggest(trial, "v_dim") if attn == "mhsa" else None,
        mlp_ratio=dims["mlp_ratio"].suggest(trial, "mlp_ratio"),
        attn=attn,
        sandwich=dims["sandwich"].suggest(trial, "sandwich"),
        token_policy=policy,
        **own,
    )


def params(config: ViTConfig) -> dict[str, Any]:
    """Every knob's value in ``config`` (each field is the knob of its name): the inverse of
    :func:`suggest`, which draws ``v_dim`` and a policy's knobs only under their conditions
    (the registry keeps the knobs a draw asks for)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def adaptive(config: ViTConfig) -> Adaptive | None:
    """The adaptive side of ``config`` (its token policy's), or None for a static one."""
    policy = POLICIES[config.token_policy]
    return None if policy is None else policy(config)


def build(config: ViTConfig, *, num_classes: int, in_chans: int = 3) -> VisionTransformer:
    check(num_classes >= 1, f"`num_classes`={num_classes} must be >= 1")
    check(in_chans >= 1, f"`in_chans`={in_chans} must be >= 1")
    fields = dict(
        img_size=config.img_size, patch_size=config.patch_size, in_chans=in_chans,
        num_classes=num_classes, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, qk_dim=config.qk_dim, v_dim=config.v_dim,
        mlp_ratio=config.mlp_ratio, attn=config.attn, sandwich=config.sandwich,
        halting=config.halting_params(), gating=config.gating_params(),
    )
    if config.token_policy == "cascade":
        from . import dvt  # the cascade builds on this module's model: imported when used
        grid = config.img_size // config.patch_size
        return dvt.CascadeViT(cascade=config.cascade_params(grid), **fields)
    return VisionTransformer(**fields)


from .vit_structure import ViTStructure  # noqa: E402  (it reads this module's model)

register(SearchSpace(
    name="vit",
    config_cls=ViTConfig,
    presets=PRESETS,
    dims=DIMS,
    suggest_fn=suggest,
    build_fn=build,
    check_fn=check_dims,
    params_fn=params,
    adaptive_fn=adaptive,
    budget_knobs={**halting.BUDGET_KNOBS, **gating.BUDGET_KNOBS, **cascading.BUDGET_KNOBS},
    architecture=ARCHITECTURE,
    weights_architecture_fn=architecture_of_weights,
    structure_cls=ViTStructure,
    description="Isotropic ViT/DeiT (class token, learned positions) with per-head Q/K and V "
                "widths, MHSA or cascaded group attention, and sandwich FFN blocks.",
))
