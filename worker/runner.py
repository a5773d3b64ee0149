"""Runs one delivered job from start to a terminal state.

The job record decides whether a delivery runs at all (`JobStore.start`): a finished job, or one
whose lease another live worker holds, is left alone. Failures are sorted by `worker.faults`: a
failure of the model or pipeline ends the job `failed` with a readable error and the worker keeps
serving; Redis or storage being unreachable is retried in place and then hands the job back
(`InfrastructureUnavailable`, the attempt refunded); a broken device hands the job back
(`DeviceBroken`, the attempt counted) for the worker to exit.
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
from pydantic import ValidationError

from shared.errors import JobCanceled, JobError, ModelLoadError, PipelineError
from shared.jobs.params import JobParams
from shared.jobs.record import Job, Outcome, Output, Phase, Status
from shared.jobs.store import JobStore
from shared.logging import log_context
from shared.metrics import observe_job_finished, observe_job_started
from shared.settings import Settings
from shared.storage import Storage
from shared.storage.keys import output_key
from worker.job_pipeline import run_params
from worker.loaded_model import LoadedModel
from worker.faults import (DeviceBroken, InfrastructureUnavailable, is_device_fault, is_infrastructure_fault,
                           retry_infrastructure)
from worker.lease import LeaseKeeper, hand_back_job
from worker.pipeline_cache import PipelineCache
from worker.previews import encode_png, preview_image

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class LeaseLost(Exception):
    """This worker's lease on the job expired (a long pause, Redis away longer than the TTL): the
    job may run elsewhere, so this copy stops and writes nothing; a reaper requeues it if no one
    took it over."""


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage, catalog: Catalog,
                 cache: PipelineCache[LoadedModel], worker_id: str) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        self.catalog, self.cache, self.worker_id = catalog, cache, worker_id
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    def running_jobs(self) -> list[str]:
        with self._running_lock:
            return sorted(self._running)

    def run(self, job_id: str) -> Outcome:
        """Run `job_id` if this delivery should; returns what happened (for logs and tests)."""
        with log_context(job_id=job_id):
            return self._run(job_id)

    def _retry(self, call, what: str):
        """`call()`, retried in place while Redis or storage is unreachable (`KILN_INFRA_RETRY_S`)."""
        return retry_infrastructure(call, what, self.settings.infra_retry_s)

    def _run(self, job_id: str) -> Outcome:
        token = uuid.uuid4().hex
        result = self._retry(lambda: self.store.start(job_id, self.worker_id, token, self.settings.lease_ttl_s,
                                                      self.settings.max_attempts), "starting the job")
        if not result.started:
            logger.info("job %s not run: %s %s", job_id, result.outcome, result.detail)
            return Outcome(result.outcome)
        job = self._retry(lambda: self.store.get(job_id), "reading the job")
        with log_context(request_id=job.request_id):
            return self._run_started(job, token)

    def _run_started(self, job: Job, token: str) -> Outcome:
        observe_job_started(job)
        with self._running_lock:
            self._running.add(job.id)
        try:
            with LeaseKeeper(self.store, job.id, token, self.settings.lease_ttl_s) as lease:
                status, outputs, error, timings = self._execute(job, token, lease)
                if lease.lost.is_set():
                    raise LeaseLost("the lease expired before the result was stored")
                observe_job_finished(job, status, timings)
                finished = self._retry(lambda: self.store.finish(job.id, token, status, outputs=outputs, error=error,
                                                                 timings=timings), "storing the job's result")
        except LeaseLost as exc:
            logger.warning("job %s abandoned here: %s; a reaper requeues it unless another worker has it", job.id, exc)
            return Outcome.LEASE_LOST
        except InfrastructureUnavailable as exc:
            self._hand_back(job, token, refund_attempt=True, why=str(exc))
            raise
        except DeviceBroken as exc:
            self._hand_back(job, token, refund_attempt=False, why=str(exc))
            raise
        finally:
            with self._running_lock:
                self._running.discard(job.id)
        if not finished:
            logger.warning("job %s finished here but its record had moved on; result dropped", job.id)
            return Outcome.SUPERSEDED
        logger.info("job %s %s in %.2fs", job.id, status.value, timings.get("total_s", 0.0))
        return Outcome(status.value)

    def _hand_back(self, job: Job, token: str, refund_attempt: bool, why: str) -> None:
        """Put the job back to `queued` for the caller to send again. If Redis is still away, the
        lease expires on its own and a reaper requeues the job (counting the attempt)."""
        logger.warning("job %s handed back to its queue (%s)", job.id, why)
        try:
            self._retry(lambda: hand_back_job(self.store, job.id, token, refund_attempt), "handing the job back")
        except InfrastructureUnavailable:
            logger.error("could not hand job %s back; its lease expires and a reaper requeues it", job.id)

    def _execute(self, job: Job, token: str, lease: LeaseKeeper):
        started = time.time()
        timings = {"queue_wait_s": round(started - job.created_at, 4)}
        try:
            params = _job_params(job)
            self._phase(job, token, Phase.LOADING)
            loaded = self._load(job)
            timings["load_s"] = round(time.time() - started, 4)
            t0 = time.time()
            spec = self.catalog.get(job.model)
            self._phase(job, token, Phase.DENOISING)
            try:
                images = run_params(loaded, spec.family, params, self._step_hook(job.id, token, lease),
                                    self._input_images(params), self._preview_hook(job, params, token, spec.family),
                                    catalog=self.catalog)
            finally:
                self.cache.release(loaded)  # an evicted model is freed once its last job is done
            timings["model_s"] = round(time.time() - t0, 4)
            t0 = time.time()
            self._phase(job, token, Phase.UPLOADING)
            outputs = self._store_images(job, params, images)
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
        except (InfrastructureUnavailable, DeviceBroken, LeaseLost):
            raise
        except Exception as exc:  # a pipeline bug must fail the job, not the worker
            _raise_if_not_the_jobs(exc)
            logger.exception("job %s failed in the pipeline", job.id)
            error = PipelineError(f"{type(exc).__name__}: {exc}")
            return Status.FAILED, [], error.to_dict(), timings

    def _load(self, job: Job) -> LoadedModel:
        try:
            return self.cache.acquire(job.model)
        except Exception as exc:
            _raise_if_not_the_jobs(exc)
            logger.exception("could not load model %s", job.model)
            raise ModelLoadError(f"model {job.model!r} could not be loaded: {type(exc).__name__}: {exc}") from exc

    def _phase(self, job: Job, token: str, phase: Phase) -> None:
        self._retry(lambda: self.store.annotate(job.id, token, {"type": "phase", "phase": phase.value},
                                                phase=phase.value), f"recording phase {phase.value}")

    def _preview_hook(self, job: Job, params: JobParams, token: str, family: str):
        """Stores the job's latest preview (`previews/<id>/latest.png`) and tells the record."""
        if not params.preview_every:
            return None
        key = f"previews/{job.id}/latest.png"

        def on_preview(step: int, latents: torch.Tensor) -> None:
            png = encode_png(preview_image(latents, pixel_space=family == "ddpm"))
            self._retry(lambda: self.storage.put(key, png, "image/png"), "storing a preview")
            self._retry(lambda: self.store.annotate(job.id, token, {"type": "preview", "step": step},
                                                    preview_key=key, preview_step=step), "recording a preview")

        return on_preview

    def _input_images(self, params: JobParams) -> dict[str, Image.Image]:
        """The job's input images (validated and stored as PNG by the API), as pipeline arguments."""
        inputs = {}
        for key, argument, mode in ((params.image_key, "image", "RGB"), (params.mask_key, "mask_image", "L")):
            if key:
                data = self._retry(lambda: self.storage.get(key), f"reading input {key}")
                inputs[argument] = Image.open(io.BytesIO(data)).convert(mode)
        return inputs

    def _step_hook(self, job_id: str, token: str, lease: LeaseKeeper):
        last = [0.0]
        deadline = time.monotonic() + self.settings.job_timeout_s

        def on_step(step: int, total: int) -> None:
            if lease.lost.is_set():
                raise LeaseLost("this worker lost the job's lease")
            if time.monotonic() > deadline:
                raise JobError(f"the job ran longer than {self.settings.job_timeout_s:g}s", code="timeout")
            now = time.monotonic()
            if step < total and now - last[0] < self.settings.progress_interval_s:
                return
            last[0] = now
            if self._retry(lambda: self.store.progress(job_id, token, step, total), "recording progress") == "cancel":
                raise JobCanceled("canceled by request")

        return on_step

    def _store_images(self, job: Job, params: JobParams, images: list[Image.Image]) -> list[Output]:
        fmt = params.output_format
        outputs = []
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, format=fmt.upper())
            data = buffer.getvalue()
            key = output_key(job.id, index, fmt)
            self._retry(lambda: self.storage.put(key, data, CONTENT_TYPES[fmt]), f"uploading {key}")
            outputs.append(Output(index=index, key=key, size=len(data), seed=params.seed,
                                  content_type=CONTENT_TYPES[fmt], width=image.width, height=image.height))
        return outputs


def _job_params(job: Job) -> JobParams:
    """The job's stored params, typed; a record they cannot be read from fails the job."""
    try:
        return JobParams.from_stored(job.params)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "params"
        raise JobError(f"the job's stored params are not valid: {field}: {first['msg']}",
                       code="invalid_params") from None


def _raise_if_not_the_jobs(exc: Exception) -> None:
    """Re-raise a failure that is not the job's own as what it is (see `worker.faults`)."""
    if is_infrastructure_fault(exc):
        raise InfrastructureUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if is_device_fault(exc):
        raise DeviceBroken(f"{type(exc).__name__}: {exc}") from exc
