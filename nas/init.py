"""The spec's ``init`` section: warm-start weights fix the architecture, and must fit.

``fix_architecture`` (while the spec is read): the weights' architecture (an export's config,
or what a state dict's shapes say) fixes the space's architecture dimensions; a spec that
restricts one of them to something else is an error naming both, and a dimension that the
weights do not fix (a bare state dict does not say the number of heads) must be fixed by the
spec; an export's config fixes every dimension it uses (those it does not use, such as the
widths of stages it does not have, are never drawn). ``check_init_weights`` (in the driver,
before any trial): a candidate of the spec, built for the data, takes the weights tensor by
tensor (trainers.warmstart.plan).
"""

from __future__ import annotations

from collections.abc import Mapping

import search_spaces
from search_spaces.dims import Dim, Fixed, Replay
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


def check_init_weights(space_name: str, dims: Mapping[str, Dim], init: InitSpec, *,
                       num_classes: int, in_chans: int) -> list[str]:
    """Build the spec's first candidate (every dimension at its first value) for the data
    and check that it takes the weights; returns the tensors that would start fresh."""
    if init.weights is None:
        return []
    space = search_spaces.get(space_name)
    merged = {**space.dims, **dims}
    config = space.suggest(Replay({n: d.values()[0] for n, d in merged.items()}), merged)
    model = space.build(config, num_classes=num_classes, in_chans=in_chans)
    try:
        return plan(model, read_init(init.weights).shapes, adaptive=space.adaptive(config),
                    fresh=init.fresh)
    except InitError as err:
        raise SpecError(f"init.weights = {init.weights!r}: {err}") from None
