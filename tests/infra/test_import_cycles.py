"""No import circles in `api`, `shared` or `worker` (the graph is read from the source: see
`tests.infra.import_graph`), and the walker finds a circle when there is one."""

from __future__ import annotations

import pytest

from tests.infra.import_graph import cycles, cycles_touching, graph, modules


@pytest.fixture(scope="module")
def found() -> list[list[str]]:
    return cycles(graph())


def test_the_graph_covers_every_package():
    names = modules(("api", "shared", "worker"))
    assert {"api.app", "api.services", "shared.jobs.store", "worker.app"} <= set(names)


@pytest.mark.parametrize("package", [
    "api",
    "shared",
    "worker",
])
def test_no_import_cycles(found, package):
    assert cycles_touching(package, found) == []


def test_a_lazy_import_still_closes_a_circle(tmp_path):
    """`a` imports `b` at module level, `b` imports `a` inside a function: a circle all the same;
    an import under `if TYPE_CHECKING:` is not one."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    (package / "d.py").write_text("import pkg.c\n")
    assert cycles(graph(["pkg"], root=tmp_path)) == [["pkg.a", "pkg.b"]]
