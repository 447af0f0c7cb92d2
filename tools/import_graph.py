"""The edgeft import graph in numbers: modules, import edges, cycles, method→method imports, the longest
functions and the imports pushed into functions (run it before and after a restructuring).

    python tools/import_graph.py [--root PATH] [--top 10]

Reads the source only (ast), so it runs on any checkout without importing the package. An edge is a
module-level `import`/`from … import` of another edgeft module; a cycle is a strongly connected
component of those edges, and the second count adds the imports made inside functions.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

METHODS_PACKAGE = "edgeft.compress.methods"
SHARED = {"__init__", "base", "common", "distillation", "irf_stages", "options", "views"}  # shared steps, not methods


def modules(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module under root/edgeft."""
    found = {}
    for path in sorted((root / "edgeft").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def edges(tree: ast.Module, known: set[str], anywhere: bool) -> set[str]:
    """The edgeft modules a module imports: at module level, or `anywhere` (also inside functions)."""
    out = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeft"):
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                    for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("edgeft")}
    return out & known


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, result = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def function_lengths(name: str, tree: ast.Module) -> list[tuple[int, str]]:
    """(lines, module:function) of every function and method."""
    return [(node.end_lineno - node.lineno + 1, f"{name}:{node.name}") for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    files = modules(args.root)
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in files.items()}
    known = set(files)
    graph = {m: edges(t, known, anywhere=False) - {m} for m, t in trees.items()}
    full = {m: edges(t, known, anywhere=True) - {m} for m, t in trees.items()}
    methods = {m for m in known if m.startswith(METHODS_PACKAGE + ".") and m.rpartition(".")[2] not in SHARED}
    crossing = sorted(f"{m} -> {o}" for m in methods for o in full[m] & methods)
    lengths = sorted((length for name, tree in trees.items() for length in function_lengths(name, tree)),
                     reverse=True)
    print(f"modules: {len(files)}, lines: {sum(len(p.read_text().splitlines()) for p in files.values())}")
    print(f"import edges: {sum(map(len, graph.values()))} at module level, "
          f"{sum(map(len, full.values())) - sum(map(len, graph.values()))} more inside functions")
    for label, g in (("module level", graph), ("with imports inside functions", full)):
        found = cycles(g)
        print(f"cycles ({label}): {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    print(f"method -> method imports: {len(crossing)}" + "".join(f"\n  {c}" for c in crossing))
    print(f"longest functions (of {len(lengths)}):" + "".join(f"\n  {n:4d}  {f}" for n, f in lengths[:args.top]))
    print("largest modules:" + "".join(f"\n  {n:4d}  {m}" for n, m in sorted(
        ((len(p.read_text().splitlines()), m) for m, p in files.items()), reverse=True)[:5]))


if __name__ == "__main__":
    main()
