"""Token policies: ways for an isotropic ViT to spend less on easy inputs.

A token policy changes how a ViT of the ``vit`` family (search_spaces/vit/) runs its blocks,
not the blocks themselves: A-ViT halting (``halting/``), AdaViT usage gates (``gating/``) and
DVT cascades (``cascade/``). A config chooses one by its ``token_policy`` field ("static":
none). Each policy is a package with

- its config fields: a frozen, keyword-only dataclass mixin (``halt_*``, ``gate_*``,
  ``cascade_*``) that the family's config inherits, their search dimensions, their checks,
  the budget knobs and ``suggest`` (the fields of a candidate that uses the policy);
- its model: a subclass of the family's ``VisionTransformer`` (search_spaces/vit/model.py)
  around the family's blocks, as timm's DeiT extends timm's ViT; what it adds has its own
  state-dict names (``gates.*``, ``stages.*``, ...), the rest is named like a static ViT so a
  static parent's weights fit it;
- its cost model and its :class:`~search_spaces.adaptive.Adaptive` subclass (knobs,
  operating points, loss terms);

all gathered in one :class:`TokenPolicy`, the package's ``POLICY``. ``POLICIES`` below is the
registry (name -> policy, in the order their fields and dims appear); the family asks it for
everything (its config's mixins, dims, budget knobs, suggest, checks, the adaptive side and
the model's builder) and names no policy.

To add a policy: write its package like the three here, export ``POLICY``, and add it to
``POLICIES``. Its fields join the ``vit`` config, and a config's key hashes only the fields
of its own policy (Config.key_fields), so no existing config's key changes.
"""

from __future__ import annotations

from . import cascade, gating, halting
from .token_policy import TokenPolicy

POLICIES: dict[str, TokenPolicy] = {
    p.name: p for p in (halting.POLICY, gating.POLICY, cascade.POLICY)
}


def get(name: str) -> TokenPolicy:
    """The policy registered as ``name`` (KeyError if none is)."""
    return POLICIES[name]


def names() -> tuple[str, ...]:
    return tuple(POLICIES)


def field_mixins() -> tuple[type, ...]:
    """Every policy's config mixin, in registry order (the bases of a family's config)."""
    return tuple(p.fields for p in POLICIES.values())


def field_names() -> frozenset[str]:
    """The config fields of every policy."""
    return frozenset(name for p in POLICIES.values() for name in p.field_names())


__all__ = ["POLICIES", "TokenPolicy", "field_mixins", "field_names", "get", "names"]
