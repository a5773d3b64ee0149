"""Where models run: CUDA with fp16 when present, else CPU with fp32; settings override both."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return f"{self.device} ({name}, {str(self.dtype).removeprefix('torch.')})"


def choose_placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """Pick the device and dtype: explicit settings first, then what the machine has."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"KILN_DEVICE={device} but CUDA is not available on this machine")
    if dtype is None:
        dtype = "float16" if chosen.type == "cuda" else "float32"
    return Placement(chosen, _DTYPES[dtype])
