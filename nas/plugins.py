"""Families from outside the package: modules a spec names under ``plugins``.

A plugin is a Python module (a dotted name importable where the search runs, or a ``.py``
file path) that registers one or more search spaces at import
(``search_spaces.registry.register``), and loss terms if it needs its own
(``trainers.losses.register_term``). The driver imports the spec's plugins before it checks
the spec's space, every trial imports them before it builds its candidate, and ``nas``
commands on a study import the ones its spec.yaml names. Importing one twice does nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from .sections import fail


def _loaded_from(path: Path) -> bool:
    return any(getattr(m, "__file__", None) and Path(m.__file__).resolve() == path
               for m in list(sys.modules.values()))


def load_plugins(plugins: Iterable[str]) -> None:
    """Import each plugin (a module name, or a path ending in .py); SpecError if one cannot
    be imported."""
    for item in plugins:
        try:
            if item.endswith(".py"):
                path = Path(item).expanduser().resolve()
                if _loaded_from(path):
                    continue
                if not path.is_file():
                    fail("plugins", item, "no such file")
                name = f"vitnas_plugin_{path.stem}"
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                importlib.import_module(item)
        except (ImportError, SyntaxError) as err:
            fail("plugins", item, f"cannot be imported ({type(err).__name__}: {err})")


def resolved(plugins: Iterable[str]) -> tuple[str, ...]:
    """Plugin file paths made absolute (trials run in other folders); names as given."""
    return tuple(str(Path(p).expanduser().resolve()) if p.endswith(".py") else p
                 for p in plugins)
