"""The job runner against deliberately broken models, as cog tests its worker: the real runner,
pipeline cache, step batcher and pipeline code run in-process on a real Redis and a real storage
folder; only the model misbehaves, injected through the cache's loader. Each failure must end the
job where it belongs (failed with a readable error, or handed back to the queue) with nothing lost
or half-written: no outputs stored for a job that did not succeed, no lease or batch slot held."""

from __future__ import annotations

import threading

import pytest
import torch

from shared.catalog import Catalog, ModelSpec
from shared.jobs.params import JobParams
from shared.jobs.record import Outcome, Status
from shared.jobs.store import JobStore
from shared.settings import load_settings
from shared.storage.local import LocalStorage
from tests.pipelines.tiny import tiny_ddpm_pipeline
from worker.faults import DeviceBroken
from worker.loaded_model import LoadedModel, load_model
from worker.pipeline_cache import PipelineCache
from worker.pipelines import DiffusionPipeline
from worker.runner import JobRunner

SPEC = ModelSpec(name="m", source="/nowhere", family="ddpm", default_width=8, default_height=8, fixed_size=True,
                 default_steps=4, default_scheduler="ddim", default_guidance_scale=0.0)
BUDGET = 1 << 30


class Faulty(torch.nn.Module):
    """The denoiser, with `fault(call, rows)` consulted before each batched call (1-based count);
    it may raise. Counts the faults it raised."""

    def __init__(self, inner: torch.nn.Module, fault) -> None:
        super().__init__()
        self.inner, self.fault = inner, fault
        self.calls = self.raised = 0

    def forward(self, sample, *args, **kwargs):
        self.calls += 1
        try:
            self.fault(self.calls, sample.shape[0])
        except BaseException:
            self.raised += 1
            raise
        return self.inner(sample, *args, **kwargs)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    tiny_ddpm_pipeline().save_pretrained(folder)
    return DiffusionPipeline.from_pretrained(folder)


@pytest.fixture
def world(redis_url, tmp_path, ddpm):
    """A runner whose model loads through `loader(name)` (default: the tiny DDPM, unbroken)."""
    store = JobStore.from_url(redis_url)
    storage = LocalStorage(tmp_path / "objects", fsync=False)
    settings = load_settings(redis_url=redis_url, progress_interval_s=0, infra_retry_s=0.5, max_attempts=3)
    made: list[PipelineCache] = []

    def build(loader=None):
        cache = PipelineCache[LoadedModel](loader or (lambda name: load_model(name, ddpm, max_rows=8)), BUDGET)
        made.append(cache)
        return JobRunner(settings, store, storage, Catalog([SPEC]), cache, "w1")

    yield store, storage, build
    for cache in made:
        for loaded in cache.values():
            loaded.close()


def broken(ddpm, fault):
    """A loader whose model's denoiser runs `fault` before every call."""
    def loader(name):
        loaded = load_model(name, ddpm, max_rows=8)
        loaded.batcher.module = Faulty(loaded.batcher.module, fault)
        return loaded

    return loader


def submit(store, job_id, steps=4, seed=1):
    params = JobParams(model="m", task="unconditional", steps=steps, scheduler="ddim", seed=seed,
                       guidance_scale=0.0, width=8, height=8)
    store.create(job_id, "owner", params.to_stored(), "kiln.default")


def assert_nothing_written(store, storage, job_id):
    job = store.get(job_id)
    assert job.outputs == [] and storage.list(f"outputs/{job_id}/") == []
    assert job.preview_key is None


def assert_served(store, storage, job_id, steps=4):
    job = store.get(job_id)
    assert job.status is Status.SUCCEEDED and job.error is None
    assert (job.progress_step, job.progress_total) == (steps, steps)
    assert [o.key for o in job.outputs] == storage.list(f"outputs/{job_id}/") == [f"outputs/{job_id}/0.png"]


def test_a_model_that_fails_to_load_fails_the_job_and_is_not_cached(world, ddpm):
    store, storage, build = world
    loads = []

    def loader(name):
        loads.append(name)
        if len(loads) == 1:
            raise OSError("diffusion_pytorch_model.safetensors: header is truncated")
        return load_model(name, ddpm, max_rows=8)

    runner = build(loader)
    submit(store, "j1")
    submit(store, "j2")
    assert runner.run("j1") is Outcome.FAILED
    job = store.get("j1")
    assert job.status is Status.FAILED and job.error["code"] == "model_load_failed"
    assert job.error["message"] == ("model 'm' could not be loaded: OSError: "
                                    "diffusion_pytorch_model.safetensors: header is truncated")
    assert_nothing_written(store, storage, "j1")
    assert runner.cache.names() == [] and runner.running_jobs() == []
    assert runner.run("j2") is Outcome.SUCCEEDED and loads == ["m", "m"]  # loaded afresh, not a broken entry
    assert_served(store, storage, "j2")


def test_a_pipeline_failing_at_step_n_fails_its_job_and_the_model_keeps_serving(world, ddpm):
    store, storage, build = world

    def fault(call, rows):
        if call == 3:
            raise RuntimeError("the UNet produced NaN at step 3")

    runner = build(broken(ddpm, fault))
    submit(store, "j1", steps=5)
    assert runner.run("j1") is Outcome.FAILED
    job = store.get("j1")
    assert job.status is Status.FAILED and job.attempts == 1
    assert job.error == {"code": "pipeline_failed", "message": "RuntimeError: the UNet produced NaN at step 3"}
    assert (job.progress_step, job.progress_total) == (2, 5)  # steps 1 and 2 were done
    assert_nothing_written(store, storage, "j1")
    loaded = runner.cache.values()[0]
    assert loaded.batcher.jobs_in_loop == 0  # the failed job left the shared batch
    submit(store, "j2", steps=5)
    assert runner.run("j2") is Outcome.SUCCEEDED
    assert_served(store, storage, "j2", steps=5)


def test_out_of_memory_in_a_shared_call_is_retried_alone_and_both_jobs_succeed(world, ddpm):
    store, storage, build = world
    fired = threading.Event()

    def fault(call, rows):
        if rows > 1 and not fired.is_set():  # the first call that carries both jobs
            fired.set()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    runner = build(broken(ddpm, fault))
    for job_id, seed in (("a", 1), ("b", 2)):
        submit(store, job_id, steps=12, seed=seed)
    outcomes, start = {}, threading.Barrier(2)

    def run(job_id):
        start.wait()
        outcomes[job_id] = runner.run(job_id)

    threads = [threading.Thread(target=run, args=(job_id,)) for job_id in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert fired.is_set() and runner.cache.values()[0].batcher.module.raised == 1
    assert outcomes == {"a": Outcome.SUCCEEDED, "b": Outcome.SUCCEEDED}
    for job_id in ("a", "b"):
        assert_served(store, storage, job_id, steps=12)


def test_out_of_memory_when_alone_fails_the_job_with_advice(world, ddpm):
    store, storage, build = world

    def fault(call, rows):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    runner = build(broken(ddpm, fault))
    submit(store, "j1")
    assert runner.run("j1") is Outcome.FAILED
    job = store.get("j1")
    assert job.error["code"] == "out_of_memory" and "ask for fewer images or a smaller size" in job.error["message"]
    assert_nothing_written(store, storage, "j1")


def test_a_fatal_device_error_hands_the_job_back_and_raises_for_the_worker_to_exit(world, ddpm):
    store, storage, build = world

    def fault(call, rows):
        if call == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    runner = build(broken(ddpm, fault))
    submit(store, "j1")
    with pytest.raises(DeviceBroken, match="illegal memory access"):
        runner.run("j1")
    job = store.get("j1")
    assert job.status is Status.QUEUED and job.error is None and job.worker is None
    assert job.attempts == 1  # counted: a job that keeps breaking devices runs out of attempts
    assert_nothing_written(store, storage, "j1")
    assert runner.running_jobs() == []
    fresh = build()  # the replacement worker process runs it
    assert fresh.run("j1") is Outcome.SUCCEEDED
    assert_served(store, storage, "j1")
    assert store.get("j1").attempts == 2


def test_a_record_of_the_previous_version_runs(world):
    """A job queued before the upgrade (flat params, no version tag) still runs."""
    store, storage, build = world
    store.create("old", "owner", {"model": "m", "task": "unconditional", "prompt": None, "negative_prompt": None,
                                  "width": 8, "height": 8, "steps": 3, "guidance_scale": 0.0, "scheduler": "ddim",
                                  "seed": 7, "num_images": 1, "strength": None, "output_format": "png"},
                 "kiln.default")
    assert build().run("old") is Outcome.SUCCEEDED
    assert_served(store, storage, "old", steps=3)
    assert store.get("old").outputs[0].seed == 7


def test_a_record_whose_params_cannot_be_read_fails_with_the_field_named(world):
    store, storage, build = world
    store.create("bad", "owner", {"model": "m", "task": "paint-by-numbers", "steps": 3, "scheduler": "ddim",
                                  "seed": 1}, "kiln.default")
    assert build().run("bad") is Outcome.FAILED
    error = store.get("bad").error
    assert error["code"] == "invalid_params" and "task" in error["message"]
    assert_nothing_written(store, storage, "bad")
