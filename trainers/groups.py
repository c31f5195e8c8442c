"""Structural groups: which slices of which state-dict tensors make one prunable unit.

A group is everything a structure owns, i.e. what disappears when it is removed: an attention
head (its Q, K and V rows and its columns of the output projection), a Q/K channel pair, a V
channel, an FFN hidden channel, or a whole block. Taylor importance (trainers/importance.py)
scores groups from these slices; pruning (trainers/pruning.py) slices the same ones away, so
scoring and pruning cannot disagree about what a channel is.

Which groups a model has is its family's answer (``Structure.groups``, the structure
contract of search_spaces/structure.py; each family's module documents its names): this
module only asks. A name's last word says its component (:func:`component`).
"""

from __future__ import annotations

from search_spaces.registry import group_layout
from search_spaces.structure import COMPONENT_OF, Groups, Part, component

__all__ = ["COMPONENT_OF", "Groups", "Part", "component", "group_layout"]
