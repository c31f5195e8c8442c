"""The search: specs, Ray Tune + Optuna search, results, Pareto fronts, export.

``import nas`` is light: it starts no Ray. ``run_search`` imports Ray when first used.
"""

from __future__ import annotations

from typing import Any

from search_spaces import _compat  # noqa: F401  (before timm: see its docstring)

from .export import export_trial, load_exported
from .pareto import hypervolume, pareto_front
from .results import load_results

__all__ = ["export_trial", "hypervolume", "load_exported", "load_results", "pareto_front",
           "run_search"]


def __getattr__(name: str) -> Any:
    if name == "run_search":
        from .search import run_search
        return run_search
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
