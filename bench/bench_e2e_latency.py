"""End-to-end latency of one job through the real stack, split into its parts.

Starts its own Redis, the API (gunicorn) and one worker with the same commands as `make up`
(local-folder storage, the bundled model), warms the worker with one job, then submits jobs one
at a time and polls each every `--poll-ms` until it succeeds, then downloads the image.

    .venv/bin/python bench/bench_e2e_latency.py --jobs 10 --steps 20

Parts (medians): submit (POST round trip), queue wait (created → started, from the record),
model (denoising loop), upload (encode + store), poll lag (finished → client saw it), download.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.localstack import (api_command, free_port, http_ok, redis_command, redis_ping,  # noqa: E402
                               stop_all, wait_until, worker_command)


def ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def one_job(url: str, steps: int, seed: int, poll_s: float) -> dict[str, float]:
    t0 = time.time()
    job = requests.post(f"{url}/v1/jobs", json={"steps": steps, "seed": seed}, timeout=10).json()
    t_submit = time.time()
    while True:
        state = requests.get(job["url"], timeout=10).json()
        if state["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(poll_s)
    t_seen = time.time()
    assert state["status"] == "succeeded", state
    requests.get(state["outputs"][0]["url"], timeout=10).raise_for_status()
    t_done = time.time()
    timings = state["timings"]
    return {
        "submit": t_submit - t0,
        "queue wait": timings["queue_wait_s"],
        "load (cache)": timings["load_s"],
        "model": timings["model_s"],
        "upload": timings["upload_s"],
        "poll lag": t_seen - ts(state["finished_at"]),
        "download": t_done - t_seen,
        "total (client)": t_done - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--poll-ms", type=float, default=50)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    redis_port, api_port = free_port(), free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = {**os.environ, "KILN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "KILN_STORAGE": "local",
           "KILN_STORAGE_ROOT": str(var / "outputs"), "KILN_MODELS_DIR": str(var / "models"),
           "KILN_LOG_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "worker.bundled", str(var / "models" / "kiln-ddpm-tiny")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen(redis_command(redis_port, var), stdout=subprocess.DEVNULL)]
    try:
        wait_until(lambda: redis_ping(redis_port), 15, "redis")
        log = open(var / "stack.log", "wb")
        procs.append(subprocess.Popen(api_command(f"127.0.0.1:{api_port}", workers=1, threads=4), env=env,
                                      stdout=log, stderr=log))
        procs.append(subprocess.Popen(worker_command(), env=env, stdout=log, stderr=log))
        wait_until(lambda: http_ok(f"{url}/healthz"), 60, "the API")
        warm = one_job(url, args.steps, 0, args.poll_ms / 1000)
        print(f"first job (cold worker: model load {warm['load (cache)']:.2f}s): {warm['total (client)']:.2f}s")
        runs = [one_job(url, args.steps, seed, args.poll_ms / 1000) for seed in range(1, args.jobs + 1)]
    finally:
        stop_all(procs)
    print(f"\n{args.jobs} jobs, {args.steps} steps, bundled model, poll every {args.poll_ms:g} ms\n")
    print("| part | median ms | p90 ms |\n|---|---|---|")
    for part in runs[0]:
        values = sorted(run[part] * 1000 for run in runs)
        print(f"| {part} | {statistics.median(values):.1f} | {values[int(0.9 * (len(values) - 1))]:.1f} |")


if __name__ == "__main__":
    main()
