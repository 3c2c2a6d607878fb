"""The module import graph of src/qaprune, built with ``ast``: no cycles, plug-ins import
downward only, the ground floor (``qaprune.param``) stands on nothing but the errors.

Every import counts, also those inside functions (they run on first use and tie the modules
together all the same). ``from pkg import sub`` is an edge to ``pkg.sub`` when that is a module;
a package ``__init__`` importing its own submodules (to fill its registry) is not an edge.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# What sits above the plug-ins: the recipe and everything that reads it or runs experiments.
UPPER = {
    "qaprune.recipe",
    "qaprune.compress",
    "qaprune.train",
    "qaprune.runner",
    "qaprune.rundir",
    "qaprune.demo",
    "qaprune.report",
    "qaprune.cli",
    "qaprune.autosearch",
    "qaprune.methods",
    "qaprune.reference",
    "qaprune.select",
}
# Plug-ins and the floors under them: none of them may reach UPPER, directly or through others.
PLUGINS = [
    "qaprune.param",
    "qaprune.registry",
    "qaprune.errors",
    "qaprune.io",
    "qaprune.quant.bits",
    "qaprune.quant.fake_quant",
    "qaprune.quant.activations",
    "qaprune.quant.cluster",
    "qaprune.quant.mixed",
    "qaprune.prune.criteria",
    "qaprune.prune.structures",
    "qaprune.prune.schedules",
    "qaprune.prune.allocation",
    "qaprune.prune.pruner",
    "qaprune.prune.channels",
    "qaprune.prune.groups",
    "qaprune.prune.stats",
    "qaprune.prune.optim",
    "qaprune.prune.genetic",
    "qaprune.quant.unify",
    "qaprune.metrics",
    "qaprune.storage",
    "qaprune.data",
    "qaprune.models",
    "qaprune.export.lower",
    "qaprune.export.formats",
    "qaprune.export.shrink",
]


def modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "qaprune").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _targets(node: ast.AST, name: str, is_pkg: bool, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """module -> the qaprune modules it imports (anywhere in its code)."""
    mods, graph = modules(), {}
    for name, path in mods.items():
        is_pkg, edges = path.name == "__init__.py", set()
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _targets(node, name, is_pkg, mods):
                while target and target not in mods:  # an attribute of a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name and not (is_pkg and target.startswith(name + ".")):
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _upper(name: str) -> bool:
    return any(name == u or name.startswith(u + ".") for u in UPPER)


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert len(graph) > 60
    assert "qaprune.param" in graph["qaprune.prune.pruner"]  # a plain import
    assert "qaprune.rundir" in graph["qaprune.export.api"]  # an import inside a function


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugins_import_downward_only(plugin: str) -> None:
    graph = import_graph()
    assert plugin in graph
    upward = sorted(m for m in reachable(graph, plugin) if _upper(m))
    assert not upward, f"{plugin} reaches {upward}"


def test_the_ground_floor_stands_on_the_errors_only() -> None:
    assert import_graph()["qaprune.param"] == {"qaprune.errors"}
