"""What `make up` runs (`python -m shared.localstack`), driven from outside: the example request its
banner prints is sent as printed, and the picture that comes back shows what the prompt asked for."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import requests
from PIL import Image

from kiln_shapes import data
from kiln_shapes.evaluate import judge
from shared.localstack import free_port
from shared.settings import REPO_ROOT


def read_banner(proc: subprocess.Popen, timeout: float = 120) -> str:
    """stdout up to the end of the banner (its last line names the download command)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"localstack exited ({proc.poll()}) before its banner:\n{''.join(lines)}")
        lines.append(line)
        if "outputs/0" in line:
            return "".join(lines)
    raise AssertionError(f"no banner within {timeout}s:\n{''.join(lines)}")


def test_make_up_serves_the_example_it_prints(tmp_path):
    env = {**os.environ, "KILN_VAR_DIR": str(tmp_path / "var"), "KILN_API_PORT": str(free_port()),
           "KILN_METRICS_PORT": "0", "KILN_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("KILN_MODELS_FILE", None)
    proc = subprocess.Popen([sys.executable, "-m", "shared.localstack"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        banner = read_banner(proc)
        assert "AUTH DISABLED" in banner
        url = re.search(r"API: (http://127\.0\.0\.1:\d+)", banner).group(1)
        body = json.loads(re.search(r"-d '(\{.*\})'", banner).group(1))
        assert "model" in body and body["prompt"]

        models = requests.get(f"{url}/v1/models", timeout=10).json()["models"]
        assert models[0]["name"] == body["model"] == "kiln-shapes"  # the default, listed first
        assert models[0]["defaults"] == {"width": 64, "height": 64, "steps": 20, "scheduler": "dpmpp_2m",
                                         "guidance_scale": 4.0}
        assert {"red", "circle", "background"} <= set(models[0]["vocabulary"])

        response = requests.post(f"{url}/v1/jobs", json=body, timeout=10)
        assert response.status_code == 202, response.text
        job_url = response.json()["url"]
        deadline = time.monotonic() + 180
        while (job := requests.get(job_url, timeout=10).json())["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        png = requests.get(f"{url}/v1/jobs/{job['id']}/outputs/0", timeout=10)
        image = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
        asked = data.scene_from_caption(body["prompt"])
        verdict = judge(image)
        assert (verdict.colour, verdict.shape, verdict.background) == (asked.colour, asked.shape, asked.background)
    finally:
        proc.send_signal(signal.SIGTERM)  # localstack stops its children, then exits 0
        try:
            code = proc.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
    assert code == 0
