"""The import graph of Kiln's packages, read from the source with `ast` (nothing is imported),
and its cycles.

An edge `a → b` is any `import` or `from … import` in module `a` naming module `b` — at module
level or inside a function (a lazy import only hides a circle, it does not remove it), except
under `if TYPE_CHECKING:`. `from pkg import name` points at `pkg.name` when that is a module,
else at `pkg`. A cycle is a strongly connected component of more than one module (Tarjan).

    python -m tests.infra.import_graph [api shared worker]   # prints each cycle, exits 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "shared", "worker")


def modules(packages: Iterable[str], root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → source file, for every module under `packages`."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, (ast.Name, ast.Attribute)) \
        and ast.unparse(test).endswith("TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if _type_checking_only(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        else:
            yield from _imports(node)


def _base(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a `from` import names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    here = module.split(".") if is_package else module.split(".")[:-1]
    anchor = here[:len(here) - node.level + 1]
    return ".".join(anchor + ([node.module] if node.module else []))


def edges(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that `module` imports."""
    targets = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = _base(module, node, path.name == "__init__.py")
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {t for t in targets if t in known and t != module}


def graph(packages: Iterable[str] = PACKAGES, root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(packages, root)
    return {name: edges(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def cycles_touching(package: str, found: list[list[str]]) -> list[list[str]]:
    """The cycles with a module of `package` in them."""
    return [c for c in found if any(m == package or m.startswith(package + ".") for m in c)]


def main(argv: list[str]) -> int:
    found = cycles(graph(argv or PACKAGES))
    for component in found:
        print("cycle:", " ↔ ".join(component))
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
