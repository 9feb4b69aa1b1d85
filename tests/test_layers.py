"""The package's layers, read from its own imports (module level and inside functions): no import circle, and
the rules the architecture relies on (the registry mechanism and the catalogue imports torch only, config does
not pull in the lean forward, diagnostics sit below evaluation and sampling)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "entrolab"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``entrolab`` module ``path`` imports (``from entrolab import x`` counts as ``entrolab.x`` when x is a
    module), wherever in the file the import stands."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("entrolab"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("entrolab"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules} - {module_name(path)}


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_circle_among_the_package_modules():
    """Depth-first search for a back edge; a package's ``__init__`` importing its own plugins (tasks) is the one
    allowed pattern, because the plugins import the package's names, not the other way round at import time."""
    allowed = {("entrolab.tasks", "entrolab.tasks.arithmetic"), ("entrolab.tasks", "entrolab.tasks.countdown")}
    allowed |= {("entrolab.tasks", "entrolab.tasks.jsonl"), ("entrolab.tasks", "entrolab.tasks.math_answers")}
    allowed |= {("entrolab.tasks", "entrolab.tasks.files"), ("entrolab.tasks", "entrolab.tasks.rg")}
    colour: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        colour[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if (node, nxt) in allowed or (nxt, node) in allowed:
                continue
            if colour.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in colour:
                visit(nxt, [*path, nxt])
        colour[node] = 2

    for node in sorted(GRAPH):
        if node not in colour:
            visit(node, [node])
    assert not circles, circles


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("entrolab.registry", {"entrolab"}),  # the mechanism imports nothing of entrolab
        ("entrolab.loader", {"entrolab"}),
        ("entrolab.kinds", {"entrolab"}),
        ("entrolab.presets", {"entrolab"}),
        ("entrolab.batch", {"entrolab"}),
        ("entrolab.config", {"entrolab.lean", "entrolab.rollout", "entrolab.trainer"}),
        ("entrolab.diagnostics", {"entrolab.evaluate", "entrolab.rollout", "entrolab.methods"}),
        ("entrolab.update", {"entrolab.rollout", "entrolab.lean", "entrolab.models", "entrolab.trainer"}),
        ("entrolab.rewards", {"entrolab.trainer", "entrolab.config", "entrolab.rollout"}),
    ],
)
def test_layering_rules(module, forbidden):
    bad = {m for m in GRAPH[module] if any(m == f or m.startswith(f + ".") for f in forbidden)}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_methods_import_only_torch_ops_the_registry_and_each_other():
    for path in (PACKAGE / "methods").glob("*.py"):
        if path.name == "__init__.py":
            continue
        deps = imports_of(path)
        deps = {d for d in deps if not d.startswith("entrolab.methods.")}  # a family may build on its parent's
        assert deps <= {"entrolab.ops", "entrolab.registry"}, (path.name, sorted(deps))
        tree = ast.parse(path.read_text())
        third_party = {
            (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in (n.names if isinstance(n, ast.Import) else [n])
        }
        assert third_party <= {"torch", "entrolab", "__future__", "dataclasses", "typing", "math", "collections"}, (
            path.name,
            sorted(third_party),
        )


def test_only_the_integrations_import_the_integrations():
    """The engine adapters sit on top: nothing of the core (composer, trainer, methods) depends on them."""
    bad = {
        (m, dep)
        for m, deps in GRAPH.items()
        if not m.startswith("entrolab.integrations")
        for dep in deps
        if dep.startswith("entrolab.integrations")
    }
    assert not bad, sorted(bad)


def test_the_integrations_hold_no_method():
    """An adapter calls the catalogue through the composer; it never imports a method family directly."""
    bad = {
        (m, dep)
        for m, deps in GRAPH.items()
        if m.startswith("entrolab.integrations")
        for dep in deps
        if dep.startswith("entrolab.methods.") and dep != "entrolab.methods.registry"
    }
    assert not bad, sorted(bad)
