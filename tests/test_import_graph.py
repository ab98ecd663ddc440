"""The package's import graph has no cycles, between modules or between subpackages, and no module
imports another module's private names.  Imports inside functions count (a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` do not (they never run)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "textsr"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _runtime_imports(tree: ast.AST):
    """Import nodes, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for each alias of an import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level else []
    pkg = ".".join(base + ([node.module] if node.module else []))
    return [(f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in MODULES else pkg, a.name) for a in node.names]


def _owner(name: str) -> str | None:
    while name and name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in MODULES.items():
        edges = graph.setdefault(mod, set())
        for node in _runtime_imports(ast.parse(path.read_text())):
            for target, _ in _targets(mod, is_pkg, node):
                owner = _owner(target)
                if owner is not None and owner != mod:
                    edges.add(owner)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _package_of(mod: str) -> str:
    """``textsr.backends.pixel`` -> ``textsr.backends``; top-level modules stay themselves."""
    parts = mod.split(".")
    if len(parts) > 2 and MODULES.get(".".join(parts[:2]), (None, False))[1]:
        return ".".join(parts[:2])
    return mod


def test_no_module_cycles():
    assert _cycles(_graph()) == []


def test_no_subpackage_cycles():
    collapsed: dict[str, set[str]] = {}
    for v, edges in _graph().items():
        pv = _package_of(v)
        collapsed.setdefault(pv, set()).update(_package_of(w) for w in edges if _package_of(w) != pv)
    assert _cycles(collapsed) == []


def test_no_private_names_across_modules():
    bad = []
    for mod, (path, is_pkg) in MODULES.items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            for target, name in _targets(mod, is_pkg, node):
                if name and name.startswith("_") and not name.startswith("__") and _owner(target) != mod:
                    bad.append(f"{mod} imports {name} from {target}")
    assert bad == []


def test_the_checks_can_fail():
    """The cycle finder finds a planted cycle (so an empty result above means something)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["textsr", "textsr.solver_registry", "textsr.model_registry", "textsr.cli"])
def test_light_modules_import_without_torch(module):
    """The CLI's --help, `textsr models` and the solver names need no torch."""
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
