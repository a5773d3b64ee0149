"""Run in a fresh process: load a model folder and print peak RSS growth and weight bytes (JSON).

Used by test_memory.py; a separate process keeps other tests' allocations out of the numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main(folder: str, mode: str) -> None:
    import torch
    from safetensors.torch import load_file

    from worker.models import UNet2DModel

    config = UNet2DModel.load_config(folder)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    if mode == "meta":
        model = UNet2DModel.from_pretrained(folder)
    else:  # the naive way: random init, then a second copy from the file
        model = UNet2DModel.from_config(config)
        model.load_state_dict(load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors")))
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"peak_growth": _status("VmHWM") - before, "weights": weights, "dtype": str(model.dtype),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
