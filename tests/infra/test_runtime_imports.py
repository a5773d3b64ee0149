"""The diffusion runtime's import graph: no circles, and no arrow from the runtime to serving.

The graph is read from the source (ast), so an import hidden inside a function counts as much as
one at the top of a module: a lazy import still ties the two modules together, it only hides
the circle from `python -c "import ..."`. Imports under `if TYPE_CHECKING:` are left out (they
never run). An edge goes to the module a statement names (`from a.b import c` → `a.b.c` when
that is a module, else `a.b`); the parent packages Python runs on the way are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.settings import REPO_ROOT

# The runtime: what a user of the models, schedulers and pipelines imports, and their own support.
RUNTIME = ("worker.runtime", "worker.models", "worker.schedulers", "worker.pipelines", "worker.lora")
# Serving: the Celery worker's modules, and the packages of the API and the shared job layer.
SERVING = tuple(f"worker.{name}" for name in (
    "app", "runner", "batching", "pipeline_cache", "lease", "reaper", "heartbeat", "execute",
    "metrics", "previews", "faults",
)) + ("shared", "api")


def module_files(package: str) -> dict[str, Path]:
    """Dotted module name → source file, for every module of `package` (packages by `__init__`)."""
    root = REPO_ROOT / package.replace(".", "/")
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = node.orelse if isinstance(node, ast.If) and _is_type_checking(node) else ast.iter_child_nodes(node)
        pending.extend(children)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules `module` imports (any dotted name, inside the repo or not)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        source = _absolute(node, module, is_package)
        for alias in node.names:
            candidate = f"{source}.{alias.name}"
            found.add(candidate if candidate in known else source)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of `package` it imports."""
    files = module_files(package)
    known = set(files)
    graph = {}
    for module, path in files.items():
        graph[module] = {m for m in imported_modules(module, path, known) if m in known and m != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that ends where it starts), or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(target) == 1:
                return path[path.index(target):] + [target]
            elif target not in state:
                state[target] = 1
                path.append(target)
                stack.append(iter(sorted(graph[target])))
    return None


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_find_cycle_sees_a_circle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_level_and_relative_imports_are_edges(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom . import b\nfrom .c import thing\n"
        "if TYPE_CHECKING:\n    from p import hidden\n"
        "def f():\n    import p.lazy\n"
    )
    found = imported_modules("p.a", source, known={"p.a", "p.b", "p.c", "p.lazy", "p.hidden"})
    assert {"p.b", "p.c", "p.lazy"} <= found and "p.hidden" not in found


def test_the_worker_has_no_import_circles():
    cycle = find_cycle(import_graph("worker"))
    assert cycle is None, "import circle: " + " → ".join(cycle)


@pytest.mark.parametrize("package", RUNTIME)
def test_the_runtime_imports_no_serving_module(package):
    """Arrows run serving → runtime only: the runtime could ship without the serving folder."""
    files = module_files(package)
    known = set(module_files("worker")) | set(module_files("shared")) | set(module_files("api"))
    assert files, f"{package} has no modules"
    wrong = {
        module: sorted(m for m in imported_modules(module, path, known) if _within(m, SERVING))
        for module, path in files.items()
    }
    assert {m: bad for m, bad in wrong.items() if bad} == {}
