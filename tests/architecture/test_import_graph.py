"""Dependencies inside ``smolbox/`` point down: no module imports itself back.

Why a test: cycles creep in one convenient import at a time (the store reaching
up into the engine, a command module importing the CLI entry point that imports
it). Every import counts — top level, inside functions and under
``TYPE_CHECKING`` — because each one is a dependency a reader has to follow.
The graph is read from the source with ``ast``, so nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import smolbox

PACKAGE_ROOT = Path(smolbox.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The smolbox modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != this:
            resolved.add(name)
    return resolved


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    known = set(files)
    graph = {name: imported_modules(path, known) for name, path in files.items()}
    # A package's __init__ re-exporting its own modules is not a cycle between them.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".") or d == "smolbox"}
        graph[name].discard("smolbox")
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle_inside_smolbox() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles inside smolbox/:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle() -> None:
    """The checker itself must be able to fail."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
