"""What `make up` runs (`python -m shared.localstack`), driven from outside: the example request its
banner prints is sent as printed, and the picture that comes back shows what the prompt asked for;
the banner waits for a ready worker; a SIGKILLed worker is restarted; `api.keys` finds the stack's
Redis; Ctrl-C stops everything without a traceback. Plus the supervisor and banner on their own."""

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

import redis

from kiln_shapes import data
from kiln_shapes.evaluate import judge
from shared import localstack
from shared.jobs.record import Status
from shared.localstack import Supervisor, free_port
from shared.settings import REPO_ROOT
from shared.workers import WorkerRegistry


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
    env.pop("KILN_REDIS_URL", None)
    stderr = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "shared.localstack"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    try:
        banner = read_banner(proc)
        assert "AUTH DISABLED" in banner and "Authorization" not in banner
        state = json.loads((tmp_path / "var" / "localstack.json").read_text())
        registry = WorkerRegistry(redis.Redis.from_url(state["redis_url"], decode_responses=True))
        [worker] = registry.list()
        assert worker.state == "online" and "kiln-shapes" in worker.models  # preloaded before the banner
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
        while not Status((job := requests.get(job_url, timeout=10).json())["status"]).terminal:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        png = requests.get(f"{url}/v1/jobs/{job['id']}/outputs/0", timeout=10)
        image = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
        asked = data.scene_from_caption(body["prompt"])
        verdict = judge(image)
        assert (verdict.colour, verdict.shape, verdict.background) == (asked.colour, asked.shape, asked.background)

        keys = subprocess.run([sys.executable, "-m", "api.keys", "list"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert keys.returncode == 0 and state["redis_url"] in keys.stderr, keys.stderr

        os.kill(worker.pid, signal.SIGKILL)  # the supervisor starts a new worker; Redis and API stay
        deadline = time.monotonic() + 180
        while not any(w.state == "online" and not w.stale and w.id != worker.id for w in registry.list()):
            assert time.monotonic() < deadline and proc.poll() is None, "no new worker"
            time.sleep(0.5)
        again = requests.post(f"{url}/v1/jobs", json=body, timeout=10).json()
        while (job := requests.get(again["url"], timeout=10).json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
    finally:
        proc.send_signal(signal.SIGTERM)  # localstack stops its children, then exits 0
        try:
            code = proc.wait(90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
    assert code == 0
    log = (tmp_path / "stderr.log").read_text()
    assert "restarting it in" in log and "Traceback" not in log, log[-3000:]
    assert not (tmp_path / "var" / "localstack.json").exists()


def test_supervisor_restarts_with_backoff_and_stops_in_reverse_order(tmp_path):
    said, order = [], tmp_path / "order"
    sup = Supervisor(max_backoff_s=4, healthy_after_s=100, say=said.append)
    trap = "trap 'echo {0} >> %s; exit 0' TERM; while true; do sleep 0.05; done" % order
    sup.add("redis", ["bash", "-c", trap.format("redis")])
    sup.add("worker", ["bash", "-c", "exit 3"])
    sup.add("api", ["bash", "-c", trap.format("api")])
    worker = sup.get("worker")
    worker.proc.wait(5)
    now = time.monotonic()
    sup.poll(now)
    assert worker.restart_at == now + 1 and said == ["kiln: the worker exited with code 3; restarting it in 1s"]
    sup.poll(now + 1)
    worker.proc.wait(5)
    for _ in range(3):
        sup.poll(now + 100)  # notice the exit, then the restart is due
        sup.poll(now + 200)
        worker.proc.wait(5)
    assert [line.split()[-1] for line in said] == ["1s", "2s", "4s", "4s"]  # capped at max_backoff_s
    time.sleep(0.3)  # both traps installed
    sup.stop(timeout=5)
    assert order.read_text().split() == ["api", "redis"]  # last started first, one at a time


def test_banner_with_auth_names_the_key_command_and_sends_the_key(capsys):
    localstack._print_banner("http://127.0.0.1:8000", 6390, "enabled")
    banner = capsys.readouterr().out
    assert "-m api.keys create --role admin" in banner
    curls = [line for line in banner.splitlines() if line.strip().startswith("curl")]
    assert len(curls) == 3 and all('-H "Authorization: Bearer $KILN_API_KEY"' in c for c in curls)
