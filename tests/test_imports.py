"""The package's import graph: no cycle, and no transfer method importing another (DESIGN.md §House style 3, 5)."""
from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edgeft.compress.methods import METHODS

PACKAGE = Path(__file__).resolve().parents[1] / "edgeft"
sys.path.insert(0, str(PACKAGE.parent / "tools"))
import import_graph  # noqa: E402  (tools/: the one reader of the import graph)


def module_names() -> list[str]:
    """Every module of the edgeft package, dotted."""
    return list(import_graph.modules(PACKAGE.parent))


def imports(module: str, anywhere: bool = False) -> set[str]:
    """The edgeft modules `module` imports when it is imported (not inside functions or TYPE_CHECKING),
    or `anywhere` in it (tools/import_graph.py reads them from the source)."""
    path = import_graph.modules(PACKAGE.parent)[module]
    return import_graph.edges(ast.parse(path.read_text()), set(module_names()), anywhere) - {module}


def test_the_import_graph_has_no_cycle():
    graph = {m: imports(m) for m in module_names()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_method_module_imports_another():
    methods = {METHODS.get(name).where.partition(":")[0] for name in METHODS.names()}
    assert len(methods) >= 5
    for module in methods:
        assert not imports(module, anywhere=True) & (methods - {module}), module


@pytest.mark.parametrize("seed", [0, 1])
def test_every_module_imports_in_a_fresh_interpreter_in_any_order(seed):
    names = [m for m in module_names() if m != "edgeft.__main__"]  # __main__ runs the CLI
    random.Random(seed).shuffle(names)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
