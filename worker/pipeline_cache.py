"""Loaded pipelines, kept per worker process in an LRU within a memory budget.

Components are loaded once and shared read-only between jobs; per-job state (scheduler,
generator, latents) never lives here. Two threads asking for a model that is loading wait for
the one load.

Jobs hold a model while they run (`acquire` / `release`, or `using`). An evicted model is
closed (`close()`: its batcher threads stop and drop the weights) as soon as no job holds it —
at once when idle, else when its last job releases it — so its memory really is freed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Callable, Generic, TypeVar

import torch

logger = logging.getLogger(__name__)

# What the cache holds per model: the worker's `LoadedModel` (anything with `components` and,
# optionally, `close()`).
Loaded = TypeVar("Loaded")


def module_bytes(loaded: Any) -> int:
    """Bytes held by the parameters and buffers of every torch component of a pipeline (text
    encoders, VAE, denoiser, ...); a tensor shared between components counts once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for component in getattr(loaded, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                key = (tensor.data_ptr(), tensor.numel())
                if tensor.data_ptr() and key in seen:
                    continue
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


class PipelineCache(Generic[Loaded]):
    def __init__(self, loader: Callable[[str], Loaded], budget_bytes: int) -> None:
        self._loader = loader
        self._budget = budget_bytes
        self._entries: OrderedDict[str, tuple[Loaded, int]] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._users: dict[int, int] = {}  # id(value) → jobs holding it
        self._evicted: dict[int, Loaded] = {}  # evicted values still held by a job
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "loads": 0, "evictions": 0}

    def get(self, name: str) -> Loaded:
        """The pipeline for model `name`, loading it (once) if needed."""
        while True:
            with self._lock:
                if name in self._entries:
                    self._entries.move_to_end(name)
                    self.stats["hits"] += 1
                    return self._entries[name][0]
                waiter = self._loading.get(name)
                if waiter is None:
                    self._loading[name] = threading.Event()
                    break
            waiter.wait()
        try:
            pipeline = self._loader(name)
        finally:
            with self._lock:
                self._loading.pop(name).set()
        self._insert(name, pipeline)
        return pipeline

    def acquire(self, name: str) -> Loaded:
        """`get`, holding the value for a job until `release`: it is not closed while held."""
        while True:
            value = self.get(name)
            with self._lock:
                if name in self._entries and self._entries[name][0] is value:  # not evicted meanwhile
                    self._users[id(value)] = self._users.get(id(value), 0) + 1
                    return value

    def release(self, value: Loaded) -> None:
        with self._lock:
            left = self._users.pop(id(value), 0) - 1
            if left > 0:
                self._users[id(value)] = left
            closing = left <= 0 and self._evicted.pop(id(value), None) is not None
        if closing:
            _close(value)

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[Loaded]:
        value = self.acquire(name)
        try:
            yield value
        finally:
            self.release(value)

    def _insert(self, name: str, pipeline: Loaded) -> None:
        size = module_bytes(pipeline)
        idle = []
        with self._lock:
            self.stats["loads"] += 1
            self._entries[name] = (pipeline, size)
            while len(self._entries) > 1 and self.used_bytes() > self._budget:
                evicted, (value, _) = self._entries.popitem(last=False)
                self.stats["evictions"] += 1
                logger.info("evicted pipeline %s to stay within %d bytes", evicted, self._budget)
                if self._users.get(id(value)):
                    self._evicted[id(value)] = value  # closed when its last job releases it
                else:
                    idle.append(value)
        for value in idle:
            _close(value)
        del idle
        if self.stats["evictions"] and torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the evicted weights' memory back to the device

    def used_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def values(self) -> list[Loaded]:
        with self._lock:
            return [value for value, _ in self._entries.values()]


def _close(value: Any) -> None:
    """Stop what an evicted value runs (its batcher threads) so nothing keeps its weights alive."""
    close = getattr(value, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - eviction must go on; the leak is logged
            logger.exception("closing an evicted pipeline failed")
