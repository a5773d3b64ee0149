"""API submission throughput and latency at a fixed rate, with the load generator in its own process.

Starts its own Redis and the API under gunicorn (as `make up` does: gthread workers, dispatcher
threads in the API, keys required), creates one user key per simulated tenant, then a separate
process sends `POST /v1/jobs` open-loop at `--rate` requests/s for `--seconds`: each request's
latency is measured from when it was *scheduled*, not sent, so a slow server cannot hide its
queueing (no coordinated omission). No worker runs: this measures the API alone.

    .venv/bin/python bench/bench_api.py --rate 100 --seconds 10 --api-workers 2 --threads 8

Prints achieved submissions/s, p50/p90/p99/max latency, and status-code counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.localstack import api_command, free_port, http_ok, redis_command, redis_ping, stop_all, wait_until  # noqa: E402

ADMIN = "kiln_bench_admin_key_0123456789abcdef0123"
BODY = {"model": "kiln-ddpm-tiny", "steps": 10, "seed": 1}


def generate_load(url: str, keys: list[str], rate: float, seconds: float, out: mp.Queue) -> None:
    """Open-loop load: request i is due at start + i/rate; latency counts from that moment."""
    sessions = threading.local()
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def send(i: int, due: float) -> None:
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
        try:
            status = sessions.s.post(f"{url}/v1/jobs", json=BODY, headers=headers, timeout=30).status_code
        except requests.RequestException:
            status = 0
        with lock:
            results.append((time.perf_counter() - due, status))

    total = int(rate * seconds)
    start = time.perf_counter() + 0.2
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(total):
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(send, i, due)
    out.put({"results": results, "elapsed": time.perf_counter() - start})


def start_stack(tmp: Path, api_workers: int, threads: int) -> tuple[list[subprocess.Popen], str, str]:
    redis_port, api_port = free_port(), free_port()
    procs = [subprocess.Popen(redis_command(redis_port, tmp), stdout=subprocess.DEVNULL)]
    wait_until(lambda: redis_ping(redis_port), 15, "redis")
    url = f"http://127.0.0.1:{api_port}"
    env = {**os.environ, "KILN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "KILN_PUBLIC_URL": url,
           "KILN_STORAGE_ROOT": str(tmp / "outputs"), "KILN_MODELS_DIR": str(tmp / "models"),
           "KILN_BOOTSTRAP_ADMIN_KEY": ADMIN, "KILN_AUTH": "enabled", "KILN_LOG_LEVEL": "WARNING",
           "KILN_RATE_LIMIT_BURST": "1000000", "KILN_MAX_ACTIVE_JOBS": "1000000"}
    cmd = [c for c in api_command(f"127.0.0.1:{api_port}", api_workers, threads) if c not in ("--access-logfile", "-")]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_until(lambda: http_ok(f"{url}/livez"), 60, "the API")
    return procs, url, f"redis://127.0.0.1:{redis_port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        procs, url, _ = start_stack(Path(tmp), args.api_workers, args.threads)
        try:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            keys = [requests.post(f"{url}/v1/keys", json={"name": f"t{i}"}, headers=admin, timeout=10).json()["secret"]
                    for i in range(args.tenants)]
            out: mp.Queue = mp.get_context("spawn").Queue()
            loader = mp.get_context("spawn").Process(target=generate_load,
                                                     args=(url, keys, args.rate, args.seconds, out))
            loader.start()
            report = out.get(timeout=args.seconds * 10 + 60)
            loader.join()
        finally:
            stop_all(procs)
    print(json.dumps(summarize(report, args), indent=2))
    return 0


def summarize(report: dict, args: argparse.Namespace) -> dict:
    latencies = sorted(lat for lat, status in report["results"] if status == 202)
    codes: dict[str, int] = {}
    for _, status in report["results"]:
        codes[str(status)] = codes.get(str(status), 0) + 1

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else 0.0

    return {"target_rate": args.rate, "seconds": args.seconds, "api_workers": args.api_workers,
            "threads": args.threads, "achieved_per_s": round(len(latencies) / report["elapsed"], 1),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0.0, "codes": codes}


if __name__ == "__main__":
    sys.exit(main())
