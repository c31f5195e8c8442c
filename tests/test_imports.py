"""The packages' import graph has no cycle.

Every module of nas, trainers and search_spaces is read with ``ast`` (nothing is imported):
its absolute and relative imports, at module level and inside functions, are edges to the
modules they name (``from a.b import c`` names the module ``a.b.c`` if there is one, else
``a.b``). Two graphs must be acyclic:

- every edge, wherever the import sits (a function-level import is a circle that only waits
  for its first call);
- the edges that run at import time (not those inside functions), each also to the packages
  the import executes on the way (importing ``a.b.c`` runs ``a.b``'s ``__init__``), but for
  the importer's own packages, which Python has started before it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "trainers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imports(name: str) -> Iterator[tuple[str, bool]]:
    """(module imported, at import time?) for every import of module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function |= {id(inner) for inner in ast.walk(node) if inner is not node}
    for node in ast.walk(tree):
        now = id(node) not in in_function
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, now
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.module, node.level)
            for alias in node.names:
                inner = f"{target}.{alias.name}"
                yield (inner if inner in MODULES else target), now


def _graph(*, import_time: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for target, now in _imports(name):
            if target not in MODULES or target == name or (import_time and not now):
                continue
            graph[name].add(target)
            if import_time:  # the packages Python runs on the way to ``target``
                parts = target.split(".")
                graph[name] |= {p for i in range(1, len(parts))
                                if (p := ".".join(parts[:i])) not in own and p != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_modules_and_their_imports() -> None:
    graph = _graph(import_time=False)
    assert {"search_spaces.vit.model", "search_spaces.policies.halting", "nas.cli"} <= set(graph)
    assert "search_spaces.vit.model" in graph["search_spaces.policies.cascade.model"]
    assert "search_spaces.config" in graph["search_spaces.vit.config"]  # relative, level 2
    # a function-level import counts in the full graph, not at import time
    assert "search_spaces.policies.halting.model" in graph["search_spaces.policies.halting"]
    assert "search_spaces.policies.halting.model" not in _graph(import_time=True)[
        "search_spaces.policies.halting"]


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph(import_time=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_at_import_time_through_packages() -> None:
    cycle = _cycle(_graph(import_time=True))
    assert cycle is None, "import cycle at import time: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_dependency_direction_in_the_graph() -> None:
    """nas -> trainers -> search_spaces, wherever the import sits."""
    for name, targets in _graph(import_time=False).items():
        top = name.split(".")[0]
        tops = {t.split(".")[0] for t in targets}
        if top == "search_spaces":
            assert not tops & {"nas", "trainers"}, (name, sorted(targets))
        if top == "trainers":
            assert "nas" not in tops, (name, sorted(targets))
