"""The pipeline cache: one load per model, LRU eviction within a memory budget."""

from __future__ import annotations

import threading
import time

import torch

from worker.pipeline_cache import PipelineCache, module_bytes


class Loaded:
    def __init__(self, name: str, floats: int) -> None:
        self.name = name
        self.components = {"unet": torch.nn.Linear(floats, 1, bias=False), "scheduler": object()}


def test_module_bytes_counts_parameters():
    assert module_bytes(Loaded("a", 100)) == 400


def test_two_threads_asking_for_a_loading_model_wait_for_one_load():
    loads = []

    def loader(name):
        loads.append(name)
        time.sleep(0.3)
        return Loaded(name, 10)

    cache = PipelineCache(loader, budget_bytes=10**6)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("m"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["m"] and len({id(g) for g in got}) == 1
    assert cache.stats == {"hits": 3, "loads": 1, "evictions": 0}


def test_least_recently_used_is_evicted_under_a_small_budget():
    cache = PipelineCache(lambda name: Loaded(name, 100), budget_bytes=900)  # room for two
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now the most recent
    cache.get("c")
    assert cache.names() == ["a", "c"] and cache.stats["evictions"] == 1
    assert cache.used_bytes() == 800


def test_a_model_bigger_than_the_budget_still_loads_alone():
    cache = PipelineCache(lambda name: Loaded(name, 1000), budget_bytes=100)
    cache.get("a")
    cache.get("b")
    assert cache.names() == ["b"]


def test_a_failed_load_is_not_cached_and_waiters_retry():
    calls = []

    def loader(name):
        calls.append(name)
        if len(calls) == 1:
            raise OSError("disk on fire")
        return Loaded(name, 1)

    cache = PipelineCache(loader, budget_bytes=10**6)
    try:
        cache.get("m")
    except OSError:
        pass
    assert cache.names() == []
    assert cache.get("m").name == "m" and calls == ["m", "m"]
