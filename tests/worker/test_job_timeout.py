"""A job over its time limit is failed at its next step (once, recorded, never lost), leaves the
shared batcher, and the worker goes on serving the next job with the same model."""

from __future__ import annotations

import time

import pytest
import torch

from shared.catalog import Catalog, ModelSpec
from shared.jobs.record import Status
from shared.jobs.store import JobStore
from shared.settings import load_settings
from tests.pipelines.tiny import tiny_ddpm_pipeline
from worker.loaded_model import load_model
from worker.pipelines import DiffusionPipeline
from worker.runner import JobRunner

SPEC = ModelSpec(name="m", source="/nowhere", family="ddpm", default_width=32, default_height=32, fixed_size=True,
                 default_steps=2, default_scheduler="ddim", default_guidance_scale=0.0)


class Storage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key, data, content_type):
        self.objects[key] = data

    def get(self, key):
        return self.objects[key]


class Slow(torch.nn.Module):
    """The real denoiser, 0.1 s slower a call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        time.sleep(0.1)
        return self.inner(*args, **kwargs)


class OneModel:
    def __init__(self, loaded) -> None:
        self.loaded, self.held = loaded, 0

    def acquire(self, name):
        self.held += 1
        return self.loaded

    def release(self, value):
        self.held -= 1


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    tiny_ddpm_pipeline().save_pretrained(folder)
    return DiffusionPipeline.from_pretrained(folder)


def test_a_job_over_its_time_limit_fails_and_the_next_one_runs(redis_url, ddpm):
    store = JobStore.from_url(redis_url)
    settings = load_settings(redis_url=redis_url, job_timeout_s=0.5, progress_interval_s=0, max_attempts=3)
    loaded = load_model("m", ddpm, max_rows=4)
    loaded.batcher.module = Slow(loaded.batcher.module)
    cache = OneModel(loaded)
    runner = JobRunner(settings, store, Storage(), Catalog([SPEC]), cache, "w1")
    params = {"model": "m", "task": "unconditional", "seed": 1, "num_images": 1, "scheduler": "ddim",
              "width": 32, "height": 32}
    store.create("long", "owner", {**params, "steps": 100}, "kiln.default")
    started = time.monotonic()
    assert runner.run("long") == "failed"
    assert time.monotonic() - started < 5  # stopped at a step boundary, not after 100 slow steps
    job = store.get("long")
    assert job.status is Status.FAILED and job.error["code"] == "timeout" and job.attempts == 1
    assert "0.5s" in job.error["message"] and job.progress_step < 100
    assert runner.run("long") != "succeeded" and store.get("long").attempts == 1  # terminal: not run again
    assert loaded.batcher.jobs_in_loop == 0 and cache.held == 0

    store.create("short", "owner", {**params, "steps": 2}, "kiln.default")
    assert runner.run("short") == "succeeded"
    loaded.close()
