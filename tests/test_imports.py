"""The package's import graph is acyclic and runs down the stages, no module of it is named like a
standard-library module, and every exception users see is defined in errors.py.

Every module of the packages pyproject.toml lists is parsed, not imported. An import counts wherever it is written, inside a
function too (a deferred import hides a cycle, it does not remove it), except under
``if TYPE_CHECKING:``, which never runs. ``from .x import y`` is an edge to ``x.y`` when that is a
module, else to ``x``; the implicit import of a module's parent packages is not an edge (every
module would otherwise depend on its package's ``__init__``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / path for name, path in config.get("package-dir", {}).items()}
    return {name: dirs.get(name, ROOT / name.replace(".", "/")) for name in config["packages"]}


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the shipped packages."""
    modules: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom in ``tree``, at any depth, except in the body of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for each of ``module``'s imports of the package's own modules."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [_known(alias.name, modules) for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
                for alias in node.names
            ]
        found.extend((t, node.lineno) for t in targets if t is not None)
    return found


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        for target, line in _imports(module, path, modules):
            if not graph.has_edge(module, target):
                graph.add_edge(module, target, where=f"{path.relative_to(ROOT)}:{line}")
    return graph


def _describe(graph: nx.DiGraph, cycle: list[str]) -> str:
    steps = [f"{a} -> {b} ({graph.edges[a, b]['where']})" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
    return "\n    ".join(steps)


def test_graph_sees_every_module_and_deferred_imports():
    graph = import_graph()
    assert {"graphprune", "graphprune.errors", "graphprune.passes.base", "graphprune.models"} <= set(graph)
    # a deferred import (inside a function) is an edge: api.py imports the passes inside prepare()
    assert graph.has_edge("graphprune.api", "graphprune.passes")
    # one under `if TYPE_CHECKING:` is not: plan.py names GroupGraph in annotations only
    assert not graph.has_edge("graphprune.groups.plan", "graphprune.groups.graph")


def _cycles(graph: nx.DiGraph) -> dict[frozenset[str], str]:
    """Each set of modules that import each other, with one cycle through it."""
    cycles = {}
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1 or any(graph.has_edge(m, m) for m in component):
            cycle = [a for a, _ in nx.find_cycle(graph.subgraph(component))]
            cycles[frozenset(component)] = f"{sorted(component)}, e.g.:\n    {_describe(graph, cycle)}"
    return cycles


def test_import_graph_is_acyclic():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles.values())


def test_user_facing_exceptions_live_in_errors():
    """Every subclass of an exception in errors.py is defined there too (control-flow exceptions
    that never reach the user stay beside their use, outside that hierarchy)."""
    modules = _modules()
    ours = {n.name for n in ast.walk(ast.parse(modules["graphprune.errors"].read_text())) if isinstance(n, ast.ClassDef)}
    elsewhere = []
    for module, path in modules.items():
        if module == "graphprune.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in node.bases}
                if bases & ours:
                    elsewhere.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not elsewhere, "subclasses of graphprune's errors outside errors.py"


def test_no_module_shadows_the_standard_library():
    named = {m for m in _modules() if m.rpartition(".")[2] in sys.stdlib_module_names}
    assert not named, "named like a standard-library module"


#: graphprune's stages, in the order a model goes through them (graphprune/__init__.py's docstring)
STAGES = ["tracing", "analysis", "groups", "budget", "slimming", "training", "passes", "rebuild", "export"]
#: below every stage: what all of them read; above: the entry points and the built-in ops' table
BASE = {"errors", "ops", "common", "models"}


def _stage(module: str) -> int:
    part = module.split(".")[1] if "." in module else None
    if part in BASE:
        return -1
    return STAGES.index(part) if part in STAGES else len(STAGES)


def _upward(graph: nx.DiGraph) -> list[str]:
    """Each import of a later stage, with where it is written."""
    return [f"{a} -> {b} ({graph.edges[a, b]['where']})" for a, b in graph.edges if _stage(a) < _stage(b)]


def test_modules_import_only_their_own_or_earlier_stages():
    graph = import_graph()
    upward = _upward(graph)
    assert not upward, "imports of a later stage:\n    " + "\n    ".join(upward)
    assert {_stage(m) for m in graph} == set(range(-1, len(STAGES) + 1)), "a stage without modules, or a new package"


def test_the_stage_check_finds_an_upward_import():
    graph = import_graph()
    graph.add_edge("graphprune.tracing.tracer", "graphprune.analysis.runner", where="graphprune/tracing/tracer.py:1")
    assert _upward(graph) == ["graphprune.tracing.tracer -> graphprune.analysis.runner (graphprune/tracing/tracer.py:1)"]
