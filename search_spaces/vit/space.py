"""The ``vit`` search space: dims, suggest, build and the registry entry.

A token policy's dims, budget knobs, checks, suggest and model come from the policy registry
(search_spaces/policies/); this module names none of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .. import policies
from ..adaptive import Adaptive
from ..config import ConfigError, check
from ..dims import Choice, Dim, Fixed, IntRange, TrialLike
from ..registry import SearchSpace, register
from .config import MAX_SEGMENTS, PRESETS, SEGMENTED, TOKEN_POLICIES, ViTConfig
from .model import VisionTransformer
from .structure import ViTStructure
from .weights import architecture_of_weights

MAX_TOKENS = 1024  # most patch tokens a search domain may give (attention memory ~ tokens^2)


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
    # per-segment widths: with segments = S > 1, qk_dim_k / v_dim_k / mlp_ratio_k (k <= S)
    # are drawn instead of qk_dim / v_dim / mlp_ratio (one for all blocks unless a spec says)
    "segments": Fixed(1),
    **{f"{name}_{k}": dim for k in range(1, MAX_SEGMENTS + 1)
       for name, dim in (("qk_dim", Choice((8, 16, 32, 64))),
                         ("v_dim", Choice((None, 16, 32, 64))),
                         ("mlp_ratio", Choice((2.0, 3.0, 4.0))))},
    "attn": Choice(("mhsa", "cga")),
    "sandwich": Choice((0, 1)),
    "token_policy": Choice(TOKEN_POLICIES),
    **{name: dim for policy in policies.POLICIES.values() for name, dim in policy.dims.items()},
}
# what trained weights fix (warm start): every knob but the token policy and its own knobs
ARCHITECTURE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "qk_dim", "v_dim",
                "mlp_ratio", "segments",
                *(f"{n}_{k}" for k in range(1, MAX_SEGMENTS + 1) for n in SEGMENTED),
                "attn", "sandwich")
# what a spec may choose beyond the defaults: per-segment widths, and the narrower widths an
# inherited search cuts a parent to
_NARROW = {"embed_dim": Choice((24, 36, 48, 72, 96, 144, 192, 240, 288, 384)),
           "qk_dim": Choice((4, 8, 12, 16, 24, 32, 48, 64)),
           "v_dim": Choice((None, 4, 8, 12, 16, 24, 32, 48, 64)),
           "mlp_ratio": Choice((0.5, 1.0, 1.5, 2.0, 3.0, 4.0))}
SPEC_DOMAINS = {"segments": IntRange(1, MAX_SEGMENTS), **_NARROW,
                **{f"{n}_{k}": d for n, d in _NARROW.items() if n in SEGMENTED
                   for k in range(1, MAX_SEGMENTS + 1)}}


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
    _check_segments(merged)
    for name in merged["token_policy"].values():
        policy = policies.POLICIES.get(name)
        if policy is not None and policy.check_dims is not None:
            policy.check_dims(merged)
    fields = {name: dim for name, dim in merged.items() if name not in _DRAW_ONLY}
    base = {name: dim.values()[0] for name, dim in fields.items()}
    for name, dim in merged.items():
        if name == "segments":
            continue  # checked against depth above
        # qk_dim_2 is a qk_dim
        field = name.rsplit("_", 1)[0] if name in _DRAW_ONLY else name
        for value in dim.values():
            values = {**base, field: value}
            if field == "v_dim":
                values["attn"] = "mhsa"  # v_dim is drawn only for mhsa
            elif values["attn"] != "mhsa":
                values["v_dim"] = None
            try:
                ViTConfig(**values)
            except ConfigError as err:
                raise ConfigError(f"space.dims.{name}: value {value!r} gives an invalid "
                                  f"config: {err}") from None


_DRAW_ONLY = {"segments", *(f"{n}_{k}" for k in range(1, MAX_SEGMENTS + 1) for n in SEGMENTED)}


def _check_segments(dims: Mapping[str, Dim]) -> None:
    """Every segment count must be at most every depth (each segment gets a block)."""
    most, fewest = max(dims["segments"].values()), min(dims["depth"].values())
    if most > fewest:
        raise ConfigError(f"space.dims.segments: {most} segments need depth >= {most}; "
                          f"space.dims.depth allows {fewest}")


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
    token policy's own knobs (e.g. ``halt_*``) only for that policy, the per-segment widths
    (``qk_dim_k``, ...) instead of the shared ones when ``segments`` > 1."""
    attn = dims["attn"].suggest(trial, "attn")
    policy = dims["token_policy"].suggest(trial, "token_policy")
    own = policies.get(policy).suggest(trial, dims) if policy in policies.POLICIES else {}
    segments = dims["segments"].suggest(trial, "segments")

    def widths(name: str, drawn: bool = True) -> Any:
        """One value for every block, or (segments > 1) one per segment."""
        if not drawn:
            return None
        if segments == 1:
            return dims[name].suggest(trial, name)
        return tuple(dims[f"{name}_{k}"].suggest(trial, f"{name}_{k}")
                     for k in range(1, segments + 1))

    return ViTConfig(
        img_size=dims["img_size"].suggest(trial, "img_size"),
        patch_size=dims["patch_size"].suggest(trial, "patch_size"),
        embed_dim=dims["embed_dim"].suggest(trial, "embed_dim"),
        depth=dims["depth"].suggest(trial, "depth"),
        num_heads=dims["num_heads"].suggest(trial, "num_heads"),
        qk_dim=widths("qk_dim"),
        v_dim=widths("v_dim", attn == "mhsa"),
        mlp_ratio=widths("mlp_ratio"),
        attn=attn,
        sandwich=dims["sandwich"].suggest(trial, "sandwich"),
        token_policy=policy,
        **own,
    )


def params(config: ViTConfig) -> dict[str, Any]:
    """Every knob's value in ``config`` (each field is the knob of its name; a per-segment
    width also as ``{name}_{k}``, a shared one as that for every k): the inverse of
    :func:`suggest`, which draws ``v_dim``, the per-segment widths and a policy's knobs only
    under their conditions (the registry keeps the knobs a draw asks for)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values["segments"] = config.segments()
    for name in SEGMENTED:
        value = getattr(config, name)
        every = value if isinstance(value, tuple) else (value,) * MAX_SEGMENTS
        values.update({f"{name}_{k}": v for k, v in enumerate(every, start=1)})
    return values


def adaptive(config: ViTConfig) -> Adaptive | None:
    """The adaptive side of ``config`` (its token policy's), or None for a static one."""
    policy = config.policy()
    return None if policy is None else policy.adaptive(config)


def build(config: ViTConfig, *, num_classes: int, in_chans: int = 3) -> VisionTransformer:
    """The static model, or the model its token policy builds around the same arguments."""
    check(num_classes >= 1, f"`num_classes`={num_classes} must be >= 1")
    check(in_chans >= 1, f"`in_chans`={in_chans} must be >= 1")
    model = dict(
        img_size=config.img_size, patch_size=config.patch_size, in_chans=in_chans,
        num_classes=num_classes, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, qk_dim=config.qk_dim, v_dim=config.v_dim,
        mlp_ratio=config.mlp_ratio, attn=config.attn, sandwich=config.sandwich,
    )
    policy = config.policy()
    return VisionTransformer(**model) if policy is None else policy.build(config, **model)


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
    budget_knobs={name: knob for policy in policies.POLICIES.values()
                  for name, knob in policy.budget_knobs.items()},
    architecture=ARCHITECTURE,
    spec_domains=SPEC_DOMAINS,
    weights_architecture_fn=architecture_of_weights,
    structure_cls=ViTStructure,
    description="Isotropic ViT/DeiT (class token, learned positions) with per-head Q/K and V "
                "widths, MHSA or cascaded group attention, and sandwich FFN blocks.",
))
