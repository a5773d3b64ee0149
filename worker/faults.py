"""What kind of failure an exception is, seen from a worker running a job.

Three kinds, three answers:

* an **infrastructure fault** (Redis, the broker or storage unreachable) says nothing about the
  job: the call is retried with backoff, and if the fault outlasts that the job goes back to its
  queue — it never ends `failed` for it;
* a **device fault** (a CUDA error, a device-side assert, an illegal memory access) poisons the
  process: every later job on it would fail too, so the worker gives the job back and exits to
  be replaced;
* anything else is the job's own failure (bad input, a pipeline bug) and ends it `failed`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

import kombu.exceptions
import redis.exceptions
import torch

from shared.storage.errors import StorageUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

INFRA_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (Redis replaying its AOF)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    kombu.exceptions.OperationalError,
    StorageUnavailable,
)

# Messages of errors after which a CUDA context is unusable (torch raises RuntimeError or
# torch.AcceleratorError with these).
DEVICE_FAULT = re.compile(r"CUDA error|device-side assert|illegal memory access|CUBLAS_STATUS_\w+|"
                          r"cuDNN error|NCCL error|unspecified launch failure|misaligned address")


class InfrastructureUnavailable(Exception):
    """An infrastructure fault outlasted its retries; the job must be handed back, not failed."""


class DeviceBroken(Exception):
    """The device (or the process driving it) is unusable; the worker must be replaced."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_infrastructure_fault(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is Redis, the broker or storage being unreachable."""
    return any(isinstance(e, INFRA_ERRORS + (InfrastructureUnavailable,)) for e in _chain(exc))


def is_device_fault(exc: BaseException) -> bool:
    """True when `exc` says the device can no longer be used by this process."""
    accelerator = getattr(torch, "AcceleratorError", None)
    for e in _chain(exc):
        if isinstance(e, DeviceBroken) or (accelerator is not None and isinstance(e, accelerator)):
            return True
        if isinstance(e, RuntimeError) and not isinstance(e, torch.OutOfMemoryError) and DEVICE_FAULT.search(str(e)):
            return True
    return False


def backoff_delays(first_s: float = 0.2, cap_s: float = 5.0):
    """0.2, 0.4, 0.8 … seconds, capped at `cap_s`, forever."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, cap_s)


def retry_infrastructure(call: Callable[[], T], what: str, budget_s: float,
                         sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, retried with backoff while it raises an infrastructure fault, for up to
    `budget_s` seconds; then `InfrastructureUnavailable`. Other errors pass through at once."""
    deadline = time.monotonic() + budget_s
    for delay in backoff_delays():
        try:
            return call()
        except INFRA_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise InfrastructureUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
            logger.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # backoff_delays never ends
