"""Batcher and model lifecycle: a closed batcher's thread ends, and a model the cache evicts is
really freed (no thread, no reference) once no job holds it."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

from tests.pipelines.tiny import tiny_sd_pipeline
from worker.batching import BatcherClosed, StepBatcher, StepRequest
from worker.loaded_model import load_model
from worker.pipeline_cache import PipelineCache, module_bytes
from worker.pipelines import DiffusionPipeline


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def batcher_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in (f"batcher-{name}", f"batcher-{name}-vae")]


def test_close_ends_the_thread_and_refuses_later_requests():
    batcher = StepBatcher(torch.nn.Identity(), name="closing")
    assert batcher.alive
    batcher.close()
    assert not batcher.alive and batcher.module is None and not batcher_threads("closing")
    with pytest.raises(BatcherClosed):
        batcher.submit(StepRequest(torch.zeros(1, 2), None, {}))


def make_cache(sd_folder, budget: int) -> PipelineCache:
    return PipelineCache(lambda name: load_model(name, DiffusionPipeline.from_pretrained(sd_folder), max_rows=4),
                         budget_bytes=budget)


def test_an_idle_evicted_model_is_freed(sd_folder):
    cache = make_cache(sd_folder, budget=1)  # room for one model
    loaded = cache.get("a")
    unet, vae = weakref.ref(loaded.pipeline.unet), weakref.ref(loaded.pipeline.vae)
    assert len(batcher_threads("a")) == 2  # denoiser and VAE decode
    del loaded
    cache.get("b")
    gc.collect()
    assert cache.names() == ["b"] and not batcher_threads("a")
    assert unet() is None and vae() is None


def test_a_model_in_use_is_freed_when_its_last_job_releases_it(sd_folder):
    cache = make_cache(sd_folder, budget=1)
    held = cache.acquire("a")
    unet = weakref.ref(held.pipeline.unet)
    cache.get("b")  # evicts a while a job holds it
    assert cache.names() == ["b"]
    assert len(batcher_threads("a")) == 2 and held.pipeline is not None  # the running job goes on
    cache.release(held)
    del held
    gc.collect()
    assert not batcher_threads("a") and unet() is None


def test_acquire_after_eviction_reloads(sd_folder):
    cache = make_cache(sd_folder, budget=1)
    with cache.using("a") as first:
        cache.get("b")
        with cache.using("a") as again:
            assert again is not first and again.pipeline is not None
    assert cache.stats["loads"] == 3


def test_the_budget_counts_every_component(sd_folder):
    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    parts = [pipe.unet, pipe.vae, pipe.text_encoder]
    expected = sum(t.numel() * t.element_size() for m in parts for t in [*m.parameters(), *m.buffers()])
    loaded = load_model("sd", pipe, max_rows=4)
    assert module_bytes(loaded) == expected > module_bytes(type("U", (), {"components": {"unet": pipe.unet}}))
    loaded.close()
