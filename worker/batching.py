"""Continuous batching for diffusion: the denoising steps of many jobs in one model call.

Each job runs its own pipeline call in its own thread — its own scheduler, guidance, inpainting
blend and callbacks, untouched. What the jobs share is the model: the pipeline view a job runs
holds a `BatchedModule` in place of the UNet, and every call a job makes on it goes to the
model's `StepBatcher`. The batcher waits, for a short gather window, until every job that is in
its denoising loop has asked for its next step, concatenates the requests that fit together
(same latent shape and conditioning layout) along the batch axis — latents, per-sample
timesteps, text states, added conditions — runs the model once, and hands each job its rows.

Jobs join at the next step boundary (their first request) and leave when their last step is done
(`Session.leave`), so finished and canceled jobs never hold the batch back. Different schedulers
and step counts mix freely; multi-evaluation schedulers (Heun, DPM2) simply ask more often.
If a batched call fails (out of memory, say), each request is retried alone so that only the job
that cannot run fails.

Transformer denoisers (FLUX, SD3) go through `BatchedTransformer`: per-row tensors (packed
latents, timestep, guidance, pooled and token text states) are concatenated; per-call tensors
(FLUX's `img_ids`/`txt_ids`, no batch axis) must be equal within a call, so their contents are
part of the layout key. Text of different lengths never shares a call (grouping by length, see
docs/performance.md). A call's cost is its latent elements: groups run cheapest first and no call
holds more than `max_call_cost` elements, so one oversized job cannot make a round of small jobs
wait behind a call that also carries them. `close()` stops the thread and drops the model.

VAE decodes go through a second batcher (`BatchedDecoder`, `upstream` = the denoiser's): a job
joins it at its last step and leaves once decoded, so jobs finishing the same step share one
decode call; it waits `min_window_s` for company only while jobs are still denoising.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.metrics import observe_step
from worker.lora_serving import routed

logger = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """A request reached a batcher whose model was unloaded."""


_STOP: Any = object()  # queued by `close`: the thread finishes what came before it and exits


@dataclass
class StepRequest:
    """One model call asked for by one job: tensors are (rows, ...)."""

    sample: torch.Tensor
    timestep: torch.Tensor | None  # None for calls without one (VAE decode)
    kwargs: dict[str, Any]  # encoder_hidden_states, timestep_cond, added_cond_kwargs (or empty)
    per_call: dict[str, torch.Tensor] = field(default_factory=dict)  # shared by all rows (img_ids, txt_ids)
    names: tuple[str, str] | None = None  # keyword names of sample and timestep; None: positional
    per_call_key: tuple | None = None  # the per-call tensors' fingerprints, when the caller has them
    adapters: tuple[tuple[str, float], ...] = ()  # the job's LoRA (name, weight) pairs; rows mix freely
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return self.sample.shape[0]

    @property
    def cost(self) -> int:
        """Latent elements in the call: what a step's time grows with."""
        return self.sample.numel()

    def layout(self) -> tuple:
        """Requests with equal layouts can share one model call."""
        def shape(value: Any) -> Any:  # (shape after the batch axis, dtype) of every tensor
            if isinstance(value, torch.Tensor):
                return (tuple(value.shape[1:]), value.dtype)
            if isinstance(value, dict):
                return tuple(sorted((k, shape(v)) for k, v in value.items()))
            return value

        return (shape(self.sample), self.timestep is None, self.names,
                tuple(sorted((k, shape(v)) for k, v in self.kwargs.items())),
                self.per_call_key if self.per_call_key is not None else _per_call_key(self.per_call))


def _per_call_key(per_call: dict[str, torch.Tensor]) -> tuple:
    return tuple(sorted((k, _fingerprint(v)) for k, v in per_call.items()))


def _fingerprint(tensor: torch.Tensor) -> tuple:
    """Shape, dtype and contents of a per-call tensor: calls share it only when it is equal."""
    values = tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return tuple(tensor.shape), tensor.dtype, hash(values)


def _cat_kwargs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, torch.Tensor):
            merged[key] = torch.cat(values)
        elif isinstance(first, dict):
            merged[key] = _cat_kwargs(values)
        else:
            merged[key] = first
    return merged


@dataclass
class BatchStats:
    calls: int = 0
    rows: int = 0
    job_steps: int = 0  # one per job per call: what "steps/s" counts
    last_batch_rows: int = 0
    last_batch_jobs: int = 0
    seconds: float = 0.0

    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class StepBatcher:
    """Runs the calls of many job threads on one module, batched at step boundaries."""

    def __init__(self, module: torch.nn.Module, max_rows: int = 16, max_window_s: float = 0.25,
                 name: str = "model", method: str = "forward", min_window_s: float = 0.0,
                 max_call_cost: int | None = None, upstream: StepBatcher | None = None) -> None:
        """`method` is the module's method the requests call (`forward`, or `decode` for a VAE);
        `min_window_s` is how long to wait for company even when no other job is expected — only
        while `upstream` (the denoiser's batcher, whose jobs come here next) has jobs in its loop,
        when it is given; `max_call_cost` caps the latent elements of one call (a bigger request
        runs alone)."""
        self.module, self.max_rows, self.max_window_s, self.name = module, max_rows, max_window_s, name
        self.method, self.min_window_s, self.max_call_cost = method, min_window_s, max_call_cost
        self.upstream = upstream
        self._closed = False
        self.stats = BatchStats()
        self._inbox: queue.Queue[StepRequest] = queue.Queue()
        self._lock = threading.Lock()
        self._in_loop = 0  # jobs between their first request and their `leave`
        self._call_ema_s = 0.0
        self._thread = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- job side ---------------------------------------------------------------------------
    def session(self) -> "Session":
        return Session(self)

    def submit(self, request: StepRequest) -> torch.Tensor:
        if self._closed:
            raise BatcherClosed(f"the {self.name} batcher is closed (its model was unloaded)")
        self._inbox.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread once the requests already queued are served, and drop the module so its
        memory can be freed. Later requests raise `BatcherClosed`."""
        self._closed = True
        self._inbox.put(_STOP)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- batcher thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        torch.set_grad_enabled(False)
        stopping = False
        while not stopping:
            first = self._inbox.get()
            if first is _STOP:
                break
            pending = self._gather(first)
            stopping = pending[-1] is _STOP
            for group in self._groups([r for r in pending if r is not _STOP]):
                self._run(group)
        self._fail_leftovers()
        self.module = None  # type: ignore[assignment]  # the thread no longer keeps the model alive

    def _fail_leftovers(self) -> None:
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                return
            if request is not _STOP:
                request.error = BatcherClosed(f"the {self.name} batcher closed before this step ran")
                request.done.set()

    def _gather(self, first: StepRequest) -> list[StepRequest]:
        """The first request, then more until every in-loop job has asked or the window closes."""
        pending, rows = [first], first.rows
        # Waiting for a straggler up to one model call's time is never worse than running it in a
        # call of its own afterwards, and keeps the jobs stepping in phase.
        window = min(self.max_window_s, max(0.002, self._call_ema_s))
        started = time.monotonic()
        deadline = started + window
        min_window = self.min_window_s if self.upstream is None or self.upstream.jobs_in_loop else 0.0
        while rows < self.max_rows:
            with self._lock:
                expected = self._in_loop
            everyone = len(pending) >= expected
            if everyone and time.monotonic() - started >= min_window:
                try:  # everyone is here; take whatever else is already queued, without waiting
                    request = self._inbox.get_nowait()
                except queue.Empty:
                    break
            else:  # wait for the jobs in the loop, or only `min_window_s` for ones not yet in it
                remaining = (started + min_window if everyone else deadline) - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    request = self._inbox.get(timeout=remaining)
                except queue.Empty:
                    break
            pending.append(request)
            if request is _STOP:
                break
            rows += request.rows
        return pending

    def _groups(self, pending: list[StepRequest]) -> list[list[StepRequest]]:
        """Split into compatible groups of at most `max_rows` rows and `max_call_cost` elements
        (a bigger request runs alone), cheapest group first."""
        by_layout: dict[tuple, list[list[StepRequest]]] = {}
        for request in pending:
            chunks = by_layout.setdefault(request.layout(), [[]])
            if chunks[-1] and not self._fits(chunks[-1], request):
                chunks.append([])
            chunks[-1].append(request)
        groups = [chunk for chunks in by_layout.values() for chunk in chunks]
        return sorted(groups, key=lambda group: sum(r.cost for r in group))

    def _fits(self, chunk: list[StepRequest], request: StepRequest) -> bool:
        if sum(r.rows for r in chunk) + request.rows > self.max_rows:
            return False
        return self.max_call_cost is None or sum(r.cost for r in chunk) + request.cost <= self.max_call_cost

    def _run(self, group: list[StepRequest]) -> None:
        started = time.monotonic()
        try:
            outputs = self._call(group)
        except Exception as exc:  # e.g. out of memory: retry alone so only the culprit fails
            if len(group) == 1:
                group[0].error = exc
                group[0].done.set()
                return
            logger.warning("batched call of %d jobs failed (%s); retrying each alone", len(group), exc)
            for request in group:
                self._run([request])
            return
        elapsed = time.monotonic() - started
        self._record(group, elapsed)
        for request, output in zip(group, outputs):
            request.result = output
            request.done.set()

    def _call(self, group: list[StepRequest]) -> list[torch.Tensor]:
        args = [torch.cat([r.sample for r in group])]
        if group[0].timestep is not None:
            timesteps = [r.timestep for r in group]
            if len({t.dtype for t in timesteps}) > 1:  # integer and float schedules in one batch
                timesteps = [t.float() for t in timesteps]
            args.append(torch.cat(timesteps))
        kwargs = {**_cat_kwargs([r.kwargs for r in group]), **group[0].per_call}
        if group[0].names is not None:  # transformers take hidden_states and timestep by keyword
            kwargs.update(zip(group[0].names, args))
            args = []
        call = self.module if self.method == "forward" else getattr(self.module, self.method)
        with torch.inference_mode(), routed(group):  # each row adds its own job's LoRA deltas
            output = call(*args, **kwargs, return_dict=False)[0]
        return list(output.split([r.rows for r in group]))

    def _record(self, group: list[StepRequest], elapsed: float) -> None:
        rows = sum(r.rows for r in group)
        self.stats.calls += 1
        self.stats.rows += rows
        self.stats.job_steps += len(group)
        self.stats.seconds += elapsed
        self.stats.last_batch_rows, self.stats.last_batch_jobs = rows, len(group)
        self._call_ema_s = elapsed if not self._call_ema_s else 0.8 * self._call_ema_s + 0.2 * elapsed
        observe_step(len(group), elapsed)

    # -- membership -------------------------------------------------------------------------
    def _join(self) -> None:
        with self._lock:
            self._in_loop += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_loop -= 1

    @property
    def jobs_in_loop(self) -> int:
        with self._lock:
            return self._in_loop


class Session:
    """One job's membership in a batcher: joined at its first request, left after its last step
    (or when the job ends, whichever comes first)."""

    def __init__(self, batcher: StepBatcher) -> None:
        self.batcher = batcher
        self._joined = False
        self._left = False
        self.adapters: tuple[tuple[str, float], ...] = ()  # set by `worker.lora_serving.job_loras`

    def request(self, request: StepRequest) -> torch.Tensor:
        request.adapters = self.adapters
        self.join()
        return self.batcher.submit(request)

    def join(self) -> None:
        """Count this job as one the batcher waits for (done by the first request, or earlier: a job
        that finished denoising joins the decode batcher before it asks for its decode)."""
        if not self._joined:
            self._joined = True
            self.batcher._join()

    def leave(self) -> None:
        if self._joined and not self._left:
            self._left = True
            self.batcher._leave()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


@dataclass
class ModelOutput:
    sample: torch.Tensor

    def __getitem__(self, index: int) -> torch.Tensor:
        return (self.sample,)[index]


class _StandIn(torch.nn.Module):
    """Stands in for a shared model inside one job's pipeline. It holds the real module as a
    child, so `parameters()`, `dtype`, `device` and `config` are the real ones; anything it does
    not define is read from the real module."""

    def __init__(self, inner: torch.nn.Module, session: Session) -> None:
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "session", session)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


class BatchedModule(_StandIn):
    """The denoiser of one job's pipeline: its calls go through the model's step batcher."""

    _BATCHED_KWARGS = frozenset({"encoder_hidden_states", "timestep_cond", "added_cond_kwargs"})

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor | None = None,
                return_dict: bool = True, **kwargs: Any) -> Any:
        if set(kwargs) - self._BATCHED_KWARGS:  # e.g. ControlNet residuals: not batchable, run alone
            return self.inner(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                              return_dict=return_dict, **kwargs)
        rows = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device).flatten()
        t = t.expand(rows) if t.numel() == 1 else t
        extra = {k: v for k, v in kwargs.items() if v is not None and not (isinstance(v, dict) and not v)}
        if encoder_hidden_states is not None:
            extra["encoder_hidden_states"] = encoder_hidden_states
        output = self.session.request(StepRequest(sample, t, extra))
        return ModelOutput(output) if return_dict else (output,)


class BatchedDecoder(_StandIn):
    """The VAE of one job's pipeline: `decode` goes through the model's decode batcher, so jobs
    that finish at the same step boundary are decoded in one call; `encode` and the rest are the
    real VAE's."""

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None, **kwargs: Any) -> Any:
        if generator is not None or kwargs:  # per-call slicing/tiling or a sampled decode: run alone
            return self.inner.decode(z, return_dict=return_dict, generator=generator, **kwargs)
        try:
            output = self.session.request(StepRequest(z, None, {}))
        finally:  # a job decodes once: later decodes must not wait for it while it post-processes
            self.session.leave()
        return ModelOutput(output) if return_dict else (output,)


class BatchedTransformer(_StandIn):
    """The transformer denoiser (FLUX, SD3) of one job's pipeline, through the step batcher.

    Per-row: `hidden_states` (B, seq, C) packed latents, `timestep` (B,), `guidance` (B,),
    `pooled_projections` (B, D), `encoder_hidden_states` (B, text_len, D). Per-call: `img_ids`
    (seq, 3) and `txt_ids` (text_len, 3), equal for every row of one call. Anything else that is
    set (ControlNet residuals, attention kwargs, skipped layers) cannot be batched: it runs alone.
    """

    _ROW_KWARGS = frozenset({"guidance", "pooled_projections", "encoder_hidden_states"})
    _CALL_KWARGS = frozenset({"img_ids", "txt_ids"})

    def forward(self, hidden_states: torch.Tensor, timestep: Any = None, return_dict: bool = True,
                **kwargs: Any) -> Any:
        given = {k: v for k, v in kwargs.items() if v is not None and v is not False and not _empty_dict(v)}
        if set(given) - self._ROW_KWARGS - self._CALL_KWARGS or timestep is None:
            return self.inner(hidden_states, timestep=timestep, return_dict=return_dict, **kwargs)
        rows = hidden_states.shape[0]
        row = {k: _per_row(v, rows) if k == "guidance" else v for k, v in given.items() if k in self._ROW_KWARGS}
        per_call = {k: v[0] if v.ndim == 3 else v for k, v in given.items() if k in self._CALL_KWARGS}
        request = StepRequest(hidden_states, _per_row(timestep, rows, hidden_states.device), row, per_call,
                              names=("hidden_states", "timestep"), per_call_key=self._key(per_call))
        output = self.session.request(request)
        return ModelOutput(output) if return_dict else (output,)

    def _key(self, per_call: dict[str, torch.Tensor]) -> tuple:
        """The per-call tensors' fingerprint, computed in the job's thread and once per job: a
        pipeline passes the same `img_ids`/`txt_ids` tensors at every step."""
        tensors, key = self.__dict__.get("_per_call_cache", ({}, None))
        if key is None or tensors.keys() != per_call.keys() or any(tensors[k] is not v for k, v in per_call.items()):
            tensors, key = dict(per_call), _per_call_key(per_call)
            self.__dict__["_per_call_cache"] = (tensors, key)
        return key


def _empty_dict(value: Any) -> bool:
    return isinstance(value, dict) and not value


def _per_row(value: Any, rows: int, device: Any = None) -> torch.Tensor:
    """A scalar or (rows,) tensor as (rows,)."""
    tensor = torch.as_tensor(value, device=device).flatten()
    return tensor.expand(rows) if tensor.numel() == 1 else tensor
