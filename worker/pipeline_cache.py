"""Loaded pipelines, kept per worker process in an LRU within a memory budget.

Components are loaded once and shared read-only between jobs; per-job state (scheduler,
generator, latents) never lives here. Two threads asking for a model that is loading wait for
the one load.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)


def module_bytes(loaded: Any) -> int:
    """Bytes held by the parameters and buffers of a pipeline's torch modules."""
    total = 0
    for component in getattr(loaded, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total


class PipelineCache:
    def __init__(self, loader: Callable[[str], Any], budget_bytes: int) -> None:
        self._loader = loader
        self._budget = budget_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "loads": 0, "evictions": 0}

    def get(self, name: str) -> Any:
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

    def _insert(self, name: str, pipeline: Any) -> None:
        size = module_bytes(pipeline)
        with self._lock:
            self.stats["loads"] += 1
            self._entries[name] = (pipeline, size)
            while len(self._entries) > 1 and self.used_bytes() > self._budget:
                evicted, _ = self._entries.popitem(last=False)
                self.stats["evictions"] += 1
                logger.info("evicted pipeline %s to stay within %d bytes", evicted, self._budget)
        if self.stats["evictions"] and torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the evicted weights' memory back to the device

    def used_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def values(self) -> list[Any]:
        with self._lock:
            return [value for value, _ in self._entries.values()]
