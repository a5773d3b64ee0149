"""Model CPU offload: a pipeline's models wait on the CPU and only the one running sits on the
accelerator (text encoders, then the denoiser, then the VAE), as Diffusers' `enable_model_cpu_offload`.

Each model gets a forward pre-hook (and wrapped `encode`/`decode` for VAEs) that moves it to the
execution device, moves the previously active model home, and brings the call's tensor arguments
along. Peak memory is then the largest model plus activations instead of all models together. Meant
for one job at a time: concurrent jobs on one offloaded pipeline would keep swapping models.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Iterable

import torch

ENTRY_METHODS = ("encode", "decode")  # VAE entry points that are not `forward`


def _to_device(value: Any, device: torch.device) -> Any:
    """Tensors (also inside lists, tuples and dicts) moved to `device`; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def execution_device(gpu_id: int | None = None, device: torch.device | str | None = None) -> torch.device | None:
    """The device models run on: `device` (with `gpu_id` as its index when it has none), else CUDA;
    None when neither is given nor present (then there is nothing to offload to)."""
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = "cuda"
    device = torch.device(device)
    if gpu_id is not None and device.index is None and device.type != "cpu":
        device = torch.device(device.type, gpu_id)
    return device


class ModelOffloader:
    """Keeps at most one of its models on `device`; the others on `home` (the CPU)."""

    def __init__(self, device: torch.device, home: torch.device | str = "cpu") -> None:
        self.device, self.home = device, torch.device(home)
        self.active: torch.nn.Module | None = None
        self._lock = threading.Lock()
        self._handles: list[Any] = []

    def attach(self, modules: Iterable[torch.nn.Module]) -> None:
        """Send every module home and hook it so it moves to the device when called."""
        for module in modules:
            module.to(self.home)
            self._handles.append(module.register_forward_pre_hook(self._before_forward, with_kwargs=True))
            for name in ENTRY_METHODS:
                method = getattr(module, name, None)
                if callable(method):
                    object.__setattr__(module, name, self._wrap(module, method))

    def activate(self, module: torch.nn.Module) -> None:
        """Make `module` the one on the device (the previous one goes home)."""
        with self._lock:
            if self.active is module:
                return
            if self.active is not None:
                self.active.to(self.home)
            module.to(self.device)
            self.active = module

    def offload_all(self) -> None:
        with self._lock:
            if self.active is not None:
                self.active.to(self.home)
            self.active = None

    def _before_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.activate(module)
        return _to_device(args, self.device), _to_device(kwargs, self.device)

    def _wrap(self, module: torch.nn.Module, method: Any) -> Any:
        @functools.wraps(method)
        def run_on_device(*args: Any, **kwargs: Any) -> Any:
            self.activate(module)
            return method(*_to_device(args, self.device), **_to_device(kwargs, self.device))

        return run_on_device
