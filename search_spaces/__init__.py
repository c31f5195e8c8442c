"""What can be built: frozen configs -> ``nn.Module``, one family per module.

Imports neither ray nor optuna. ``get(name)`` returns a :class:`SearchSpace`; ``names()``
lists them. The token policies (search_spaces/policies/) are imported here too, so that they
are registered before any family builds a model.
"""

from __future__ import annotations

from . import (  # noqa: F401  (register the families and the token policies)
    _compat,  # noqa: F401  (before timm: see _compat's docstring)
    efficientvit,
    policies,
    vit,
)
from .config import Config, ConfigError
from .registry import SearchSpace, get, names

__all__ = ["Config", "ConfigError", "SearchSpace", "get", "names"]
