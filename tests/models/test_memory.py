"""Loading builds the model on the meta device: peak memory stays near one copy of the weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.models import UNet2DModel

PROBE = Path(__file__).with_name("_peak_memory_probe.py")
ROOT = Path(__file__).resolve().parents[2]


def _probe(folder: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(PROBE), str(folder), mode], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_about_one_copy_of_the_weights(tmp_path):
    model = UNet2DModel(block_out_channels=(64, 128, 256, 256), layers_per_block=1, norm_num_groups=32)
    model.save_pretrained(tmp_path)
    ours, naive = _probe(tmp_path, "meta"), _probe(tmp_path, "naive")
    assert ours["weights"] > 40e6 and ours["dtype"] == "torch.float32"
    # safetensors maps the file; counting mapped pages too, one copy of the weights plus slack.
    assert ours["peak_growth"] < 1.3 * ours["weights"], ours
    assert naive["peak_growth"] > 1.7 * naive["weights"], naive  # the probe does see a second copy
