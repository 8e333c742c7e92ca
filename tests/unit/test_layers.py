"""The package layers hold: imports only point down, and no module imports itself in a circle.

Every import counts, also the ones inside functions (a function-local import
that dodges a cycle is still a cycle). The layers, lowest first, are
described in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "workbench"

# Which top-level parts of the package a part may import (besides itself and the base modules).
PURE = {"lab", "policy", "observe"}
KERNEL = {"datapath", "node"}
MAY_IMPORT: dict[str, set[str]] = {
    "lab": PURE, "policy": PURE, "observe": PURE,
    "datapath": PURE | KERNEL, "node": PURE | KERNEL,
    "agent": PURE | KERNEL,
    # replay: the recorded lab (serves the client's calls without a kernel), beside the client
    "replay": PURE | KERNEL,
    "client": PURE | KERNEL | {"replay"},
    "cli": PURE | KERNEL | {"client", "replay"},
    "notebook": PURE | KERNEL | {"client", "cli", "replay"},
}
# Modules with no workbench imports of their own, importable from anywhere.
BASE = {"workbench.errors", "workbench.wire"}
# The vocabulary: pure data shared by the C side and every layer (codes -> names).
VOCABULARY = "workbench.datapath.abi"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every workbench module ``path`` imports, resolved to module names (function-local ones too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("workbench")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("workbench"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
    return found - {name}


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def test_every_module_belongs_to_a_layer():
    parts = {part(m) for m in GRAPH if m not in BASE and m != "workbench" and m != "workbench.__main__"}
    assert parts <= set(MAY_IMPORT), f"modules outside the known layers: {sorted(parts - set(MAY_IMPORT))}"


def test_imports_only_point_down():
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        if module in ("workbench", "workbench.__main__"):
            continue   # the facade: imports what it exposes, lazily
        if module in BASE or module == VOCABULARY:
            wrong += [f"{module} -> {t}" for t in sorted(targets - BASE)]
            continue
        allowed = MAY_IMPORT[part(module)] | {part(module)}
        for target in sorted(targets):
            if target in BASE or target == VOCABULARY:
                continue
            if part(target) not in allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = {m: t for m, t in GRAPH.items() if m != "workbench"}   # the facade's lazy imports are its exports
    assert not cycles(graph), "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles(graph))


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected
