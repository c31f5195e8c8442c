"""The spec's ``init`` section: warm-start weights fix the architecture, and must fit.

``fix_architecture`` (while the spec is read): the weights' architecture (an export's config,
or what a state dict's shapes say) fixes the space's architecture dimensions; a spec that
restricts one of them to something else is an error naming both, and a dimension that the
weights do not fix (a bare state dict does not say the number of heads) must be fixed by the
spec; an export's config fixes every dimension it uses (those it does not use, such as the
widths of stages it does not have, are never drawn). ``check_init_weights`` (in the driver,
before any trial): a candidate of the spec, built for the data, takes the weights tensor by
tensor (trainers.warmstart.plan).

``init.inherit`` (trainers/inherit.py): the weights are a parent that bounds the architecture
instead (``bound_architecture``). Each value of each architecture dimension is tried on the
parent's config (its derived widths spelled out: ``Structure.explicit``; the dimensions the
spec fixes, such as ``segments``, set to their value first): a value the parent
cannot be cut to is an error naming both values where the spec gives the dimension, and is
left out of the space's default domain where it does not (the parent's own value always
stays). Values fine one at a time may still not fit together (fewer heads with widths left
to ``embed_dim // heads``): such a trial fails at its start, saying why, and trains nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import search_spaces
from search_spaces.config import ConfigError
from search_spaces.dims import Choice, Dim, Fixed, IntRange, Replay
from trainers.inherit import Parent, base_config, inherit, misfit, read_parent
from trainers.warmstart import InitError, plan, read_init

from .sections import InitSpec, SpecError, fail


def fix_architecture(space: search_spaces.SearchSpace, dims: Mapping[str, Dim],
                     init: InitSpec) -> dict[str, Dim]:
    """``dims`` with every architecture dimension fixed to the weights' value."""
    try:
        weights = read_init(init.weights)
        arch = weights.architecture(space)
    except InitError as err:
        raise SpecError(f"init.weights = {init.weights!r}: {err}") from None
    fixed = dict(dims)
    for name, value in arch.items():
        given = dims.get(name)
        if given is not None and value not in given.values():
            where = "data.img_size" if name == "img_size" else f"space.dims.{name}"
            fail(where, given.to_spec(), f"conflicts with init.weights {init.weights!r}, "
                 f"whose architecture has {name}={value!r}")
        fixed[name] = Fixed(value)
    names = space.architecture if space.architecture is not None else tuple(space.dims)
    for name in names if weights.export is None else ():  # an export's config says all
        dim = fixed.get(name, space.dims.get(name))
        if name not in arch and dim is not None and len(dim.values()) > 1:
            fail(f"space.dims.{name}", dim.to_spec(), f"init.weights {init.weights!r} does "
                 f"not say it (its tensor shapes do not show it): give one value")
    return fixed


def bound_architecture(space: search_spaces.SearchSpace, dims: Mapping[str, Dim],
                       init: InitSpec) -> dict[str, Dim]:
    """``dims`` with every architecture dimension bounded by the parent (module doc)."""
    try:
        parent = read_parent(init.weights)
    except (InitError, KeyError, ConfigError, RuntimeError) as err:
        raise SpecError(f"init.weights = {init.weights!r}: {err}") from None
    if parent.space.name != space.name:
        fail("init.weights", init.weights, f"is an export of space {parent.space.name!r}; "
             f"the search's space is {space.name!r}")
    img = parent.inputs["img_size"]
    if dims["img_size"].values() != (img,):
        fail("data.img_size", dims["img_size"].to_spec(), f"conflicts with init.weights "
             f"{init.weights!r}, whose parent was trained at img_size={img!r}")
    base = space.params_fn(space.structure(parent.config).explicit())
    names = space.architecture if space.architecture is not None else tuple(space.dims)
    for name in names:  # what the spec fixes holds in every probe (e.g. segments)
        given = dims.get(name)
        if name != "img_size" and isinstance(given, Fixed) and name in base:
            why = _beyond(parent, base, name, given.value)
            if why is not None:
                fail(f"space.dims.{name}", given.to_spec(), f"reaches beyond the parent "
                     f"init.weights {init.weights!r} ({name}={base[name]!r}): {why}")
            base[name] = given.value
    bounded = dict(dims)
    for name in names:
        given = dims.get(name)
        domain = given if given is not None else space.dims.get(name)
        if name == "img_size" or domain is None or name not in base:
            continue  # a knob the parent's config never draws (a stage it does not have)
        ok = []
        for value in domain.values():
            why = _beyond(parent, base, name, value)
            if why is None:
                ok.append(value)
            elif given is not None:
                fail(f"space.dims.{name}", given.to_spec(), f"value {value!r} reaches beyond "
                     f"the parent init.weights {init.weights!r} ({name}={base[name]!r}): {why}")
        if given is None:
            bounded[name] = _restricted(domain, ok, base[name])
    return bounded


def _beyond(parent: Parent, base: Mapping[str, object], name: str, value: object) -> str | None:
    """Why the parent cannot be cut to its config with ``name`` = ``value`` (None: it can)."""
    params = {**base, name: value}
    try:
        probe = parent.space.from_params(params, {n: Choice((v,)) for n, v in params.items()})
        return misfit(parent, base_config(parent, probe))
    except ConfigError as err:
        return str(err)


def _restricted(domain: Dim, values: list, own: object) -> Dim:
    """``domain`` narrowed to ``values`` and the parent's ``own`` value."""
    kept = list(dict.fromkeys([*values, *([] if own in values else [own])]))
    if len(kept) == 1:
        return Fixed(kept[0])
    if isinstance(domain, IntRange) and all(isinstance(v, int) for v in kept):
        low, high = min(kept), max(kept)
        if sorted(kept) == list(range(low, high + 1, domain.step)):
            return IntRange(low, high, domain.step)
    return Choice(tuple(kept))


def check_init_weights(space_name: str, dims: Mapping[str, Dim], init: InitSpec, *,
                       num_classes: int, in_chans: int) -> list[str]:
    """Build the spec's first candidate (every dimension at its first value; with
    ``init.inherit``, the architecture at the parent's) for the data and check that it
    takes the weights; returns the tensors that would start fresh."""
    if init.weights is None:
        return []
    space = search_spaces.get(space_name)
    merged = {**space.dims, **dims}
    first = {n: d.values()[0] for n, d in merged.items()}
    try:
        if init.inherit is not None:  # the parent's architecture, cut to its own base
            parent = read_parent(init.weights)
            first.update(space.architecture_of(space.structure(parent.config).explicit()))
            merged = {n: Choice((v,)) for n, v in first.items()}
        config = space.suggest(Replay(first), merged)
        model = space.build(config, num_classes=num_classes, in_chans=in_chans)
        if init.inherit is not None:
            cut = inherit(parent, config, parent.zero_scores()).state_dict
            shapes = {name: tuple(tensor.shape) for name, tensor in cut.items()}
        else:
            shapes = read_init(init.weights).shapes
        return plan(model, shapes, adaptive=space.adaptive(config), fresh=init.fresh)
    except InitError as err:
        raise SpecError(f"init.weights = {init.weights!r}: {err}") from None
