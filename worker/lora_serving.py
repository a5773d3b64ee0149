"""LoRA adapters in the worker: which adapters a loaded pipeline holds (an LRU within a byte
budget, adapters of running jobs pinned), and the hooks that route each job's rows to its own.

A job's adapters are `{name: scale}` (`JobParams.adapters()`, names from the catalog). The worker:

    with job_loras(loaded.pipeline, adapters, catalog, session):  # load/pin, route this job
        pipe(...)                                                # text encoders: this thread
    # the step batcher, around each batched denoiser call:
    with routed(requests): module(...)                           # row i -> its job's adapters

Adapters are loaded inactive (`activate=False`), so calls without routing stay the base model.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import Counter, OrderedDict
from typing import Any, ContextManager, Iterator, Mapping, Sequence

from shared.errors import ModelLoadError
from shared.settings import get_settings
from worker.lora import adapters
from worker.lora.errors import LoraError
from worker.lora.routing import adapter_rows

logger = logging.getLogger(__name__)



class AdapterCache:
    """Adapters loaded into one pipeline, least recently used evicted first once over `budget_bytes`;
    adapters pinned by running jobs are never evicted (the budget is exceeded, with a warning, instead)."""

    def __init__(self, pipeline: Any, budget_bytes: int) -> None:
        self.pipeline, self.budget_bytes = pipeline, budget_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # name -> bytes, oldest use first
        self._pins: Counter[str] = Counter()

    @property
    def loaded(self) -> dict[str, int]:
        return dict(self._sizes)

    @contextlib.contextmanager
    def use(self, specs: Sequence[Any]) -> Iterator[None]:
        """Load (or reuse) the adapters of `specs` (catalog entries: name, source, weight_name,
        revision) and keep them loaded until the block ends."""
        with self._lock:
            for spec in specs:
                self._ensure(spec)
            self._pins.update(spec.name for spec in specs)  # only once all are in: a failed load pins nothing
            self._evict()
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(spec.name for spec in specs)

    def _ensure(self, spec: Any) -> None:
        if spec.name in self._sizes:
            self._sizes.move_to_end(spec.name)
            return
        try:
            self.pipeline.load_lora_weights(spec.source, adapter_name=spec.name, weight_name=spec.weight_name,
                                            activate=False, **({"revision": spec.revision} if spec.revision else {}))
        except (LoraError, OSError) as exc:  # a bad or missing file fails the job, not the worker
            raise ModelLoadError(f"LoRA {spec.name!r} could not be loaded: {exc}") from exc
        self._sizes[spec.name] = sum(adapters.adapter_bytes(m, spec.name) for m in self.pipeline.lora_models().values())
        logger.info("LoRA %s loaded (%.1f MB)", spec.name, self._sizes[spec.name] / 2**20)

    def _evict(self) -> None:
        while sum(self._sizes.values()) > self.budget_bytes:
            victim = next((name for name in self._sizes if self._pins[name] <= 0), None)
            if victim is None:
                logger.warning("LoRA adapters in use exceed the %d-byte budget", self.budget_bytes)
                return
            self.pipeline.delete_adapters(victim)
            del self._sizes[victim]
            logger.info("LoRA %s evicted (least recently used)", victim)


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(pipeline: Any) -> AdapterCache:
    """The adapter cache of a loaded pipeline (made on first use, dropped with the pipeline)."""
    with _CACHES_LOCK:
        if pipeline not in _CACHES:
            _CACHES[pipeline] = AdapterCache(pipeline, get_settings().lora_cache_bytes)  # KILN_LORA_CACHE_BYTES
        return _CACHES[pipeline]


@contextlib.contextmanager
def job_loras(pipeline: Any, adapters: Mapping[str, float], catalog: Any, session: Any = None) -> Iterator[None]:
    """Around one job's pipeline call: load and pin its `adapters` ({name: scale}), route its
    text-encoder calls (this thread) and, through `session.adapters`, its rows in the step batcher.
    A job without LoRAs: no-op."""
    wanted = dict(adapters)
    if not wanted:
        yield
        return
    if not hasattr(pipeline, "lora_models"):
        raise LoraError(f"{type(pipeline).__name__} does not take LoRA adapters")
    specs = [catalog.get_lora(name) for name in wanted]
    with cache_for(pipeline).use(specs), adapter_rows([wanted]):
        if session is not None:
            session.adapters = tuple(wanted.items())
        yield


def routed(requests: Sequence[Any]) -> ContextManager:
    """The batcher's hook around one batched call: row r of request i uses request i's adapters
    (`request.adapters`, pairs of name and weight); nothing when no request has any."""
    if not any(getattr(r, "adapters", ()) for r in requests):
        return contextlib.nullcontext()
    return adapter_rows([dict(getattr(r, "adapters", ())) for r in requests for _ in range(r.rows)])
