"""Arrows run serving → runtime only: nothing in the diffusion runtime imports a serving module.

The runtime is what a user of the models, schedulers and pipelines imports, and their own support
(`RUNTIME`); serving is every other module of `worker` (the Celery worker: app, runner, batcher,
caches, leases, …) and the `shared` and `api` packages. The graph is `tests.infra.import_graph`'s
(read from the source, lazy imports included); its cycles are checked in `test_import_cycles`.
"""

from __future__ import annotations

import pytest

from tests.infra.import_graph import graph

RUNTIME = ("worker.runtime", "worker.models", "worker.schedulers", "worker.pipelines", "worker.lora")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _serving(module: str) -> bool:
    return not _within(module, RUNTIME) and module != "worker"


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return graph(("api", "shared", "worker"))


@pytest.mark.parametrize("package", RUNTIME)
def test_the_runtime_imports_no_serving_module(edges, package):
    """The runtime could ship without the serving folder."""
    runtime = {m: targets for m, targets in edges.items() if _within(m, (package,))}
    assert runtime, f"{package} has no modules"
    wrong = {m: sorted(t for t in targets if _serving(t)) for m, targets in runtime.items()}
    assert {m: bad for m, bad in wrong.items() if bad} == {}


def test_serving_modules_are_told_apart():
    assert _serving("worker.app") and _serving("worker.loaded_model") and _serving("shared.settings")
    assert not _serving("worker.models.unet_2d") and not _serving("worker.runtime.hub")
