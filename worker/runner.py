"""Runs one delivered job from start to a terminal state.

The job record decides whether a delivery runs at all (`JobStore.start`): a finished job, or one
whose lease another live worker holds, is left alone. Any failure of the model or pipeline ends
the job `failed` with a readable error and the worker keeps serving.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import uuid

import torch
from PIL import Image

from shared.catalog import Catalog
from shared.errors import JobCanceled, JobError, ModelLoadError, PipelineError
from shared.jobs.record import Job, Output, Status
from shared.jobs.store import JobStore
from shared.logging import log_context
from shared.metrics import observe_job_finished, observe_job_started
from shared.settings import Settings
from shared.storage import Storage
from shared.storage.keys import output_key
from worker.execute import LoadedModel, run_params
from worker.lease import LeaseKeeper
from worker.pipeline_cache import PipelineCache
from worker.previews import encode_png, preview_image

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage, catalog: Catalog,
                 cache: PipelineCache, worker_id: str) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        self.catalog, self.cache, self.worker_id = catalog, cache, worker_id
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    def running_jobs(self) -> list[str]:
        with self._running_lock:
            return sorted(self._running)

    def run(self, job_id: str) -> str:
        """Run `job_id` if this delivery should; returns what happened (for logs and tests)."""
        with log_context(job_id=job_id):
            return self._run(job_id)

    def _run(self, job_id: str) -> str:
        token = uuid.uuid4().hex
        result = self.store.start(job_id, self.worker_id, token, self.settings.lease_ttl_s,
                                  self.settings.max_attempts)
        if not result.started:
            logger.info("job %s not run: %s %s", job_id, result.outcome, result.detail)
            return result.outcome
        job = self.store.get(job_id)
        with log_context(request_id=job.request_id):
            return self._run_started(job, token)

    def _run_started(self, job: Job, token: str) -> str:
        observe_job_started(job)
        with self._running_lock:
            self._running.add(job.id)
        try:
            with LeaseKeeper(self.store, job.id, token, self.settings.lease_ttl_s) as lease:
                status, outputs, error, timings = self._execute(job, token, lease)
        finally:
            with self._running_lock:
                self._running.discard(job.id)
        observe_job_finished(job, status, timings)
        if not self.store.finish(job.id, token, status, outputs=outputs, error=error, timings=timings):
            logger.warning("job %s finished here but its record had moved on; result dropped", job.id)
            return "superseded"
        logger.info("job %s %s in %.2fs", job.id, status.value, timings.get("total_s", 0.0))
        return status.value

    def _execute(self, job: Job, token: str, lease: LeaseKeeper):
        started = time.time()
        timings = {"queue_wait_s": round(started - job.created_at, 4)}
        try:
            self._phase(job, token, "loading")
            loaded = self._load(job)
            timings["load_s"] = round(time.time() - started, 4)
            t0 = time.time()
            spec = self.catalog.get(job.model)
            self._phase(job, token, "denoising")
            images = run_params(loaded, spec.family, job.params, self._step_hook(job.id, token, lease),
                                self._input_images(job), self._preview_hook(job, token, spec.family))
            timings["model_s"] = round(time.time() - t0, 4)
            t0 = time.time()
            self._phase(job, token, "uploading")
            outputs = self._store_images(job, images)
            timings["upload_s"] = round(time.time() - t0, 4)
            timings["total_s"] = round(time.time() - started, 4)
            return Status.SUCCEEDED, outputs, None, timings
        except JobCanceled:
            return Status.CANCELED, [], None, timings
        except torch.OutOfMemoryError as exc:  # already retried alone by the batcher
            logger.error("job %s ran out of device memory", job.id)
            error = JobError(f"out of device memory even when run alone ({exc}); ask for fewer images "
                             "or a smaller size", code="out_of_memory")
            return Status.FAILED, [], error.to_dict(), timings
        except JobError as exc:
            logger.warning("job %s failed: %s", job.id, exc.message)
            return Status.FAILED, [], exc.to_dict(), timings
        except Exception as exc:  # a pipeline bug must fail the job, not the worker
            logger.exception("job %s failed in the pipeline", job.id)
            error = PipelineError(f"{type(exc).__name__}: {exc}")
            return Status.FAILED, [], error.to_dict(), timings

    def _load(self, job: Job) -> LoadedModel:
        try:
            return self.cache.get(job.model)
        except Exception as exc:
            logger.exception("could not load model %s", job.model)
            raise ModelLoadError(f"model {job.model!r} could not be loaded: {type(exc).__name__}: {exc}") from exc

    def _phase(self, job: Job, token: str, phase: str) -> None:
        self.store.annotate(job.id, token, {"type": "phase", "phase": phase}, phase=phase)

    def _preview_hook(self, job: Job, token: str, family: str):
        """Stores the job's latest preview (`previews/<id>/latest.png`) and tells the record."""
        if not job.params.get("preview_every"):
            return None
        key = f"previews/{job.id}/latest.png"

        def on_preview(step: int, latents: torch.Tensor) -> None:
            png = encode_png(preview_image(latents, pixel_space=family == "ddpm"))
            self.storage.put(key, png, "image/png")
            self.store.annotate(job.id, token, {"type": "preview", "step": step}, preview_key=key,
                                preview_step=step)

        return on_preview

    def _input_images(self, job: Job) -> dict[str, Image.Image]:
        """The job's input images (validated and stored as PNG by the API), as pipeline arguments."""
        inputs = {}
        for param, argument, mode in (("image_key", "image", "RGB"), ("mask_key", "mask_image", "L")):
            key = job.params.get(param)
            if key:
                inputs[argument] = Image.open(io.BytesIO(self.storage.get(key))).convert(mode)
        return inputs

    def _step_hook(self, job_id: str, token: str, lease: LeaseKeeper):
        last = [0.0]
        deadline = time.monotonic() + self.settings.job_timeout_s

        def on_step(step: int, total: int) -> None:
            if lease.lost.is_set():
                raise JobError("this worker lost the job's lease; another worker took it over", code="lease_lost")
            if time.monotonic() > deadline:
                raise JobError(f"the job ran longer than {self.settings.job_timeout_s:g}s", code="timeout")
            now = time.monotonic()
            if step < total and now - last[0] < self.settings.progress_interval_s:
                return
            last[0] = now
            if self.store.progress(job_id, token, step, total) == "cancel":
                raise JobCanceled("canceled by request")

        return on_step

    def _store_images(self, job: Job, images: list[Image.Image]) -> list[Output]:
        fmt = job.params.get("output_format", "png")
        outputs = []
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, format=fmt.upper())
            data = buffer.getvalue()
            key = output_key(job.id, index, fmt)
            self.storage.put(key, data, CONTENT_TYPES[fmt])
            outputs.append(Output(index=index, key=key, size=len(data), seed=job.params["seed"],
                                  content_type=CONTENT_TYPES[fmt], width=image.width, height=image.height))
        return outputs
