"""EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention.

Liu, Peng, Zheng, Yang, Hu, Yuan; CVPR 2023. https://arxiv.org/abs/2305.07027
(the MSRA EfficientViT, timm's ``efficientvit_m0``..``m5``; not MIT's multi-scale linear one).

A hierarchical ViT of "sandwich" blocks: DW+FFN pairs around one cascaded group attention
(CGA) in 7x7 windows, with conv stem, BatchNorm and ReLU throughout. Module names follow the
official code's parameter layout (so timm's checkpoints load with ``load_state_dict``).

Generalisations searched here, each reducing to the paper at its default:
- ``stem_stride`` 4/8/16: the stem keeps its four 3x3 convs; only the first log2(stride) of
  them have stride 2 (small inputs such as 28x28 then still give a few tokens).
- ``sandwich``: DW+FFN pairs on each side of the attention (paper: 1, i.e. FFN:MHSA = 2:1).
  The DW+FFN pairs around each PatchMerging stay single.
- ``v_ratio``: value dim per head = round(v_ratio * width / heads) (paper: 1.0); see
  :class:`~search_spaces.layers.cga.GroupAttention` for the cascade when it differs.
- ``ffn_ratio``: hidden width of every FFN, those around PatchMerging included (paper: 2.0).
- ``key_dim``, ``v_ratio``, ``ffn_ratio`` per stage (a tuple; ``stage_widths`` in a search):
  the paper's Taylor-pruning finding is that Q/K and FFN widths belong stage by stage. A
  stage's downsample FFNs (around the PatchMerging that starts it) take that stage's ratio.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..config import Config, ConfigError, check, check_int
from ..dims import Choice, Dim, Fixed, IntRange, TrialLike
from ..layers.conv import PatchMerging  # noqa: F401  (the family's public names)
from ..registry import SearchSpace, register
from .model import (  # noqa: F401  (the family's public names)
    EfficientViT,
    EfficientViTBlock,
    downsample,
    ffn_hidden,
    stage_resolutions,
)
from .structure import EfficientViTStructure

KIND = "efficientvit"
STEM_STRIDES = (4, 8, 16)
MAX_STAGES = 4
PER_STAGE = ("key_dim", "v_ratio", "ffn_ratio")  # one for every stage, or one per stage


# -------------------------------------------------------------------------- config + presets
def value_dim(width: int, heads: int, v_ratio: float) -> int:
    """V dim per head: round(v_ratio * width / heads) (the paper: the chunk width)."""
    return round(v_ratio * width / heads)


def _check_stage(i: int, width: int, heads: int, v_ratio: float, ffn_ratio: float) -> None:
    """The rules that tie one stage's width and heads to the global ratios."""
    check_int(f"embed_dims[{i}]", width, 1)
    check_int(f"num_heads[{i}]", heads, 1)
    check(width % heads == 0, f"`num_heads[{i}]`={heads} must divide `embed_dims[{i}]`={width}")
    v = value_dim(width, heads, v_ratio)
    check(v >= 1, f"`v_ratio`={v_ratio} gives value dim round({v_ratio} * {width} / {heads})="
                  f"{v} per head at stage {i}; it must be >= 1")
    hidden = ffn_hidden(width, ffn_ratio)
    check(hidden >= 1, f"`ffn_ratio`={ffn_ratio} gives FFN hidden width {hidden} at stage {i};"
                       " it must be >= 1")
    if i == 0:
        check(width % 8 == 0, f"`embed_dims[0]`={width} must be a multiple of 8 (the stem "
                              "widths are embed_dims[0] / 8, / 4, / 2)")


def _check_kernels(kernels: tuple[int, ...], max_heads: int) -> None:
    for i, k in enumerate(kernels):
        check_int(f"kernels[{i}]", k, 1)
        check(k % 2 == 1, f"`kernels[{i}]`={k} must be odd")
    check(len(kernels) >= max_heads, f"`kernels` has {len(kernels)} entries; it needs at least "
                                     f"max(`num_heads`)={max_heads} (one per head)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficientViTConfig(Config):
    """One EfficientViT architecture. Per-stage tuples have one entry per stage (1 to 4);
    ``key_dim``, ``v_ratio`` and ``ffn_ratio`` are one value for every stage or such a tuple
    (EfficientViT's finding: Q/K and FFN widths are best reallocated stage by stage)."""

    KIND: ClassVar[str] = "efficientvit"

    img_size: int = 224
    stem_stride: int = 16  # 4, 8 or 16: the number of stride-2 convs of the stem is log2
    embed_dims: tuple[int, ...] = (64, 128, 192)
    depths: tuple[int, ...] = (1, 2, 3)
    num_heads: tuple[int, ...] = (4, 4, 4)
    key_dim: int | tuple[int, ...] = 16  # Q and K dim per head
    v_ratio: float | tuple[float, ...] = 1.0  # V dim per head = round(v_ratio * width / heads)
    ffn_ratio: float | tuple[float, ...] = 2.0
    sandwich: int = 1  # DW+FFN pairs on each side of the attention: FFN blocks per attention
    kernels: tuple[int, ...] = (5, 5, 5, 5)  # per-head kernel of the depthwise conv on Q
    window_size: int = 7

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "kernels"):
            value = getattr(self, name)
            check(isinstance(value, tuple), f"`{name}`={value!r} must be a tuple")
        for name in ("img_size", "window_size"):
            check_int(name, getattr(self, name), 1)
        check(type(self.stem_stride) is int and self.stem_stride in STEM_STRIDES,
              f"`stem_stride`={self.stem_stride!r} must be one of {STEM_STRIDES}")
        n = len(self.embed_dims)
        check(1 <= n <= MAX_STAGES, f"`embed_dims`={self.embed_dims} must have 1 to "
                                    f"{MAX_STAGES} entries (one per stage)")
        for name in ("depths", "num_heads"):
            m = len(getattr(self, name))
            check(m == n, f"`{name}` has {m} entries but `embed_dims` has {n}: give one per stage")
        for name in PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
                value = tuple(value)
            check(not isinstance(value, tuple) or len(value) == n,
                  f"`{name}`={value!r} gives {len(value) if isinstance(value, tuple) else 1} "
                  f"values; give one for every stage or one per stage ({n})")
        for i in range(n):
            stage = self.stage(i)
            check_int("key_dim", stage["key_dim"], 1)
            for name in ("v_ratio", "ffn_ratio"):
                value = stage[name]
                check(isinstance(value, (int, float)) and not isinstance(value, bool)
                      and value > 0, f"`{name}`={getattr(self, name)!r} must be a number > 0 "
                      "(or a tuple of them, one per stage)")
        check_int("sandwich", self.sandwich, 0)
        for i in range(n):
            check_int(f"depths[{i}]", self.depths[i], 1)
            stage = self.stage(i)
            _check_stage(i, self.embed_dims[i], self.num_heads[i], stage["v_ratio"],
                         stage["ffn_ratio"])
        _check_kernels(self.kernels, max(self.num_heads))

    def stage(self, i: int) -> dict[str, Any]:
        """Stage ``i``'s ``key_dim``, ``v_ratio`` and ``ffn_ratio`` (each is one value for
        every stage, or a tuple of one per stage)."""
        return {name: (v[i] if isinstance(v, tuple) else v)
                for name in PER_STAGE for v in (getattr(self, name),)}

    def per_stage(self, name: str) -> tuple:
        """Field ``name`` (one of :data:`PER_STAGE`) for each stage."""
        return tuple(self.stage(i)[name] for i in range(len(self.embed_dims)))

    def value_dims(self) -> tuple[int, ...]:
        return tuple(value_dim(w, h, self.stage(i)["v_ratio"]) for i, (w, h) in enumerate(
            zip(self.embed_dims, self.num_heads, strict=True)))

    def resolutions(self) -> tuple[int, ...]:
        return stage_resolutions(self.img_size, self.stem_stride, len(self.embed_dims))


def _preset(embed_dims: tuple[int, ...], depths: tuple[int, ...], num_heads: tuple[int, ...],
            kernels: tuple[int, ...]) -> EfficientViTConfig:
    return EfficientViTConfig(embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                              kernels=kernels)


# The paper's M0..M5 (Table 9 / timm), at 224x224, key_dim 16, window 7.
PRESETS: dict[str, EfficientViTConfig] = {
    "m0": _preset((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
    "m1": _preset((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
    "m2": _preset((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
    "m3": _preset((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
    "m4": _preset((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
    "m5": _preset((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
}


# ------------------------------------------------------------------------------------ dims
# Widths are multiples of 16 and heads divide 4, so every draw validates. Kernel tuples are
# strings ("7,5,3,3") because Optuna's storages only keep scalar categorical choices.
WIDTHS = (16, 32, 48, 64, 96, 128, 144, 160, 192, 224, 240, 256, 288, 320, 384)
DIMS: dict[str, Dim] = {
    "img_size": Fixed(224),
    "stem_stride": Choice(STEM_STRIDES),
    "num_stages": Choice((1, 2, 3, 4)),
    **{f"width_{k}": Choice(WIDTHS) for k in range(1, MAX_STAGES + 1)},
    **{f"depth_{k}": IntRange(1, 4) for k in range(1, MAX_STAGES + 1)},
    **{f"heads_{k}": Choice((1, 2, 4)) for k in range(1, MAX_STAGES + 1)},
    "key_dim": Choice((8, 16, 32)),
    "v_ratio": Choice((0.5, 1.0)),
    "ffn_ratio": Choice((2.0, 3.0, 4.0)),
    # with stage_widths true: key_dim_k / v_ratio_k / ffn_ratio_k per stage instead (false
    # unless a spec asks: SPEC_DOMAINS)
    "stage_widths": Fixed(False),
    **{f"key_dim_{k}": Choice((8, 16, 32)) for k in range(1, MAX_STAGES + 1)},
    **{f"v_ratio_{k}": Choice((0.5, 1.0)) for k in range(1, MAX_STAGES + 1)},
    **{f"ffn_ratio_{k}": Choice((2.0, 3.0, 4.0)) for k in range(1, MAX_STAGES + 1)},
    "sandwich": Choice((1, 2)),
    "kernels": Choice(("5,5,5,5", "7,5,3,3", "3,3,3,3")),
    "window_size": Choice((4, 7)),
}


# what a spec may choose beyond the defaults: per-stage widths, and the narrower widths an
# inherited search cuts a parent to
_NARROW = {"key_dim": Choice((2, 4, 8, 16, 24, 32)), "v_ratio": Choice((0.25, 0.5, 0.75, 1.0)),
           "ffn_ratio": Choice((0.5, 1.0, 1.5, 2.0, 3.0, 4.0))}
SPEC_DOMAINS = {"stage_widths": Choice((False, True)), **_NARROW,
                **{f"{n}_{k}": d for n, d in _NARROW.items() for k in range(1, MAX_STAGES + 1)}}


def parse_kernels(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"7,5,3,3"`` (a ``kernels`` choice) -> ``(7, 5, 3, 3)``; tuples pass through."""
    if isinstance(value, str):
        try:
            return tuple(int(k) for k in value.split(","))
        except ValueError:
            raise ConfigError(f"`kernels`={value!r} must be comma-separated integers, "
                              'e.g. "7,5,3,3"') from None
    check(isinstance(value, (tuple, list)),
          f"`kernels`={value!r} must be a string like \"7,5,3,3\" or a tuple of integers")
    return tuple(value)


def suggest(trial: TrialLike, dims: Mapping[str, Dim]) -> EfficientViTConfig:
    """Draw one config, define-by-run: per-stage knobs ``*_k`` only for k <= num_stages;
    ``key_dim_k``/``v_ratio_k``/``ffn_ratio_k`` instead of the shared ones when
    ``stage_widths`` is true."""

    def draw(name: str) -> Any:
        return dims[name].suggest(trial, name)

    stages = range(1, draw("num_stages") + 1)
    each = draw("stage_widths")

    def widths(name: str) -> Any:
        return tuple(draw(f"{name}_{k}") for k in stages) if each else draw(name)

    return EfficientViTConfig(
        img_size=draw("img_size"),
        stem_stride=draw("stem_stride"),
        embed_dims=tuple(draw(f"width_{k}") for k in stages),
        depths=tuple(draw(f"depth_{k}") for k in stages),
        num_heads=tuple(draw(f"heads_{k}") for k in stages),
        key_dim=widths("key_dim"),
        v_ratio=widths("v_ratio"),
        ffn_ratio=widths("ffn_ratio"),
        sandwich=draw("sandwich"),
        kernels=parse_kernels(draw("kernels")),
        window_size=draw("window_size"),
    )


def params(config: EfficientViTConfig) -> dict[str, Any]:
    """Every knob's value in ``config`` as :func:`suggest` draws it (``kernels`` a string)."""
    stages: dict[str, Any] = {"num_stages": len(config.embed_dims)}
    for k, stage in enumerate(zip(config.embed_dims, config.depths, config.num_heads,
                                  strict=True), start=1):
        stages |= dict(zip((f"width_{k}", f"depth_{k}", f"heads_{k}"), stage, strict=True))
        stages |= {f"{name}_{k}": value for name, value in config.stage(k - 1).items()}
    each = any(isinstance(getattr(config, name), tuple) for name in PER_STAGE)
    shared = {name: config.stage(0)[name] for name in PER_STAGE}  # drawn when not ``each``
    return {**{k: getattr(config, k) for k in _SAFE_KNOBS}, **shared, **stages,
            "stage_widths": each, "kernels": ",".join(map(str, config.kernels))}


# What a probe (see check_dims) uses for the knobs it does not vary: a valid 1-stage config.
_SAFE_KNOBS: dict[str, Any] = {"img_size": 224, "stem_stride": 16, "key_dim": 16,
                               "v_ratio": 1.0, "ffn_ratio": 2.0, "sandwich": 1,
                               "kernels": "5,5,5,5", "window_size": 7}
_SAFE_STAGE: dict[str, Any] = {"width": 64, "depth": 1, "heads": 1, "key_dim": 16,
                               "v_ratio": 1.0, "ffn_ratio": 2.0}


def _stage_of(name: str) -> int:
    """k for a per-stage knob ``width_k``/``depth_k``/``heads_k``; 0 for a global one."""
    kind, _, k = name.rpartition("_")
    return int(k) if kind in _SAFE_STAGE else 0


def _probe(name: str, value: Any) -> EfficientViTConfig:
    """A config with ``value`` for knob ``name`` and safe values elsewhere: invalid only if
    ``value`` breaks a rule of its own. A per-stage knob ``*_k`` gets k stages; ``heads_k``
    gets a width of 8 per head and one kernel per head, so that only the head count is tried.
    """
    knobs = {**_SAFE_KNOBS}
    stages = [_SAFE_STAGE]
    if name == "stage_widths":
        check(isinstance(value, bool), f"`stage_widths`={value!r} must be true or false")
    elif name == "num_stages":
        check_int("num_stages", value, 1)
        check(value <= MAX_STAGES, f"`num_stages`={value} must be at most {MAX_STAGES}")
        stages = stages * value
    elif name in knobs:
        knobs[name] = value
    else:
        kind, k = name.rsplit("_", 1)
        stages = [*stages * (int(k) - 1), {**_SAFE_STAGE, kind: value}]
        if kind == "heads" and type(value) is int and value >= 1:
            stages[-1]["width"] = 8 * value
            knobs["kernels"] = (3,) * value
    own = {n: tuple(st[n] for st in stages) for n in PER_STAGE} if any(
        st[n] != _SAFE_STAGE[n] for st in stages for n in PER_STAGE) else {}
    return EfficientViTConfig(**{**knobs, "kernels": parse_kernels(knobs["kernels"]), **own},
                              embed_dims=tuple(st["width"] for st in stages),
                              depths=tuple(st["depth"] for st in stages),
                              num_heads=tuple(st["heads"] for st in stages))


def check_dims(dims: Mapping[str, Dim]) -> None:
    """Raise ConfigError if some draw from ``dims`` (over :data:`DIMS`) would not validate.

    Builds a config from every value of each knob (with safe values for the others), then
    checks, for the rules that tie knobs together (heads divide widths, value dims >= 1,
    enough kernels for the most heads), every combination that meets. Any image size works:
    the stem's stride-2 convs round up, so no stage has fewer than 1x1 tokens.
    """
    unknown = sorted(set(dims) - set(DIMS))
    if unknown:
        raise ConfigError(f"space.dims: {unknown} are not dimensions of {KIND!r}; "
                          f"known: {sorted(DIMS)}")
    merged = {**DIMS, **dims}
    # num_stages first: once its values are valid, it says which stages can be drawn
    for name in dict.fromkeys(("num_stages", *merged)):
        stage = _stage_of(name)
        if stage and stage > max(merged["num_stages"].values()):
            continue
        for value in merged[name].values():
            try:
                _probe(name, value)
            except ConfigError as err:
                raise ConfigError(f"space.dims.{name}: value {value!r} gives an invalid "
                                  f"config: {err}") from None
    try:
        _check_combinations(merged)
    except ConfigError as err:
        raise ConfigError(f"space.dims of {KIND!r} can draw an invalid config: {err}") from None


def _check_combinations(dims: Mapping[str, Dim]) -> None:
    """The cross-knob rules, over every combination of the knobs each one ties together."""
    stages = range(1, max(dims["num_stages"].values()) + 1)
    max_heads = max(max(dims[f"heads_{k}"].values()) for k in stages)
    for kernels in dims["kernels"].values():
        _check_kernels(parse_kernels(kernels), max_heads)
    each = dims["stage_widths"].values()

    def options(name: str, k: int) -> list[Any]:  # what stage k may get: shared or its own
        return [*(dims[name].values() if False in each else ()),
                *(dims[f"{name}_{k}"].values() if True in each else ())]

    for k in stages:
        for w, h, vr, fr in itertools.product(
                dims[f"width_{k}"].values(), dims[f"heads_{k}"].values(),
                options("v_ratio", k), options("ffn_ratio", k)):
            _check_stage(k - 1, w, h, vr, fr)


# ----------------------------------------------------------------------------------- build
def build(config: EfficientViTConfig, *, num_classes: int, in_chans: int = 3) -> EfficientViT:
    return EfficientViT(
        in_chans=in_chans, num_classes=num_classes, img_size=config.img_size,
        stem_stride=config.stem_stride, embed_dims=config.embed_dims, depths=config.depths,
        num_heads=config.num_heads, key_dims=config.per_stage("key_dim"),
        value_dims=config.value_dims(), ffn_ratios=config.per_stage("ffn_ratio"),
        sandwich=config.sandwich, kernels=config.kernels,
        window_size=config.window_size,
    )


register(SearchSpace(
    name=KIND,
    config_cls=EfficientViTConfig,
    presets=PRESETS,
    dims=DIMS,
    suggest_fn=suggest,
    build_fn=build,
    check_fn=check_dims,
    params_fn=params,
    structure_cls=EfficientViTStructure,
    spec_domains=SPEC_DOMAINS,
    description="EfficientViT (MSRA, CVPR 2023): hierarchical sandwich blocks with cascaded "
                "group attention in windows; presets m0..m5",
))
