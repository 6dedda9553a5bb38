"""The layout limits that keep the code livable: one-way dependencies, no import cycle between
fedft's modules at import time, modules under 350 lines and functions under 60."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "fedft").rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)  # and ``from pkg import submodule`` names the submodule:
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_fedft_never_imports_the_apps_or_the_experiments():
    for path in FILES:
        bad = {m for m in _imports(ast.parse(path.read_text()), False)
               if m.split(".")[0] in ("clients", "server", "experiments")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_import_cycle_at_import_time():
    modules = {_module(p): p for p in FILES}
    graph = {}
    for m, p in modules.items():
        found = {i for i in _imports(ast.parse(p.read_text()), True) if i in modules and i != m}
        # `from fedft.body import codec` depends on fedft.body.codec, not on the package's __init__
        graph[m] = {i for i in found if not any(j.startswith(i + ".") for j in found)}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(n):], n]))
            if n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 350
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 60, f"{node.name} is over 60 lines"
