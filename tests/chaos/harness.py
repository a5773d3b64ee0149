"""A whole Kiln stack whose parts the chaos scenarios may kill: its own Redis (AOF, restarted on
the same port and folder), its own S3 server (moto; empty again after a restart, so the bucket is
made again), and the API and one worker under `shared.localstack.Supervisor` — a killed worker is
restarted as `make up` and compose restart it. Auth is on: the scenarios talk as API keys. All
traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import redis
import requests

from shared.auth import KeyStore
from shared.jobs.store import JobStore
from shared.localstack import (Supervisor, _child_setup, api_command, free_port, http_ok, redis_command, redis_ping, stop_all,
                               wait_until, worker_command, worker_ready)
from shared.workers import WorkerRegistry
from tests.fixtures.s3server import S3Server, _spawn, _stop, _wait_until_ready

MODEL = "kiln-ddpm-tiny"
CHURN_MODELS = [f"churn-{n}" for n in range(4)]  # the same weights under four names


class ChaosStack:
    """Start with `start()`, stop with `stop()`; `client(key)` talks to the API as a key."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.redis_port, self.s3_port, self.api_port = free_port(), free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.s3 = S3Server(endpoint_url=f"http://127.0.0.1:{self.s3_port}")
        self.bucket = "chaos"
        self.extra_env = env or {}
        self.redis_proc: subprocess.Popen | None = None
        self.s3_proc: subprocess.Popen | None = None
        self.supervisor = Supervisor(max_backoff_s=2.0, healthy_after_s=10.0, say=self._say)
        self._polling = threading.Event()
        self.events: list[str] = []

    def _say(self, text: str) -> None:
        self.events.append(text)

    # Processes ----------------------------------------------------------------------------------
    def start_redis(self) -> None:
        (self.root / "redis").mkdir(exist_ok=True)
        self.redis_proc = subprocess.Popen(redis_command(self.redis_port, self.root / "redis"),
                                           stdout=subprocess.DEVNULL, preexec_fn=_child_setup)
        wait_until(lambda: redis_ping(self.redis_port), 30, "redis")
        # Replaying the AOF: Redis answers PING with LOADING until done.
        wait_until(lambda: _answers(self.redis_url), 30, "redis data")

    def kill_redis(self) -> None:
        self.redis_proc.kill()
        self.redis_proc.wait()

    def start_s3(self) -> None:
        self.s3_proc = _spawn(self.s3_port, self.root / "moto.log")
        _wait_until_ready(self.s3_proc, self.s3_port, self.root / "moto.log")
        self.s3.client.create_bucket(Bucket=self.bucket)  # moto keeps nothing across restarts

    def kill_s3(self) -> None:
        self.s3_proc.kill()
        self.s3_proc.wait()

    def env(self) -> dict[str, str]:
        return {**os.environ, "KILN_REDIS_URL": self.redis_url, "KILN_AUTH": "enabled",
                "KILN_STORAGE": "s3", "KILN_S3_BUCKET": self.bucket, "KILN_S3_ENDPOINT_URL": self.s3.endpoint_url,
                "KILN_S3_ACCESS_KEY": self.s3.access_key, "KILN_S3_SECRET_KEY": self.s3.secret_key,
                "KILN_MODELS_FILE": str(self._catalog()), "KILN_PUBLIC_URL": self.url,
                "KILN_LEASE_TTL_S": "2", "KILN_REAPER_INTERVAL_S": "0.5", "KILN_PROGRESS_INTERVAL_S": "0.2",
                "KILN_UNACKED_RESTORE_INTERVAL_S": "1", "KILN_MAX_ATTEMPTS": "5", "KILN_INFRA_RETRY_S": "5",
                "KILN_RATE_LIMIT_PER_S": "10000", "KILN_RATE_LIMIT_BURST": "10000", "KILN_MAX_ACTIVE_JOBS": "10000",
                "KILN_PIPELINE_CACHE_BYTES": "1",  # one model at a time: every switch evicts (churn)
                "KILN_METRICS_PORT": "0", "KILN_LOG_FORMAT": "text", "OMP_NUM_THREADS": "1",
                "KILN_TORCH_THREADS": "1", **self.extra_env}

    def _catalog(self) -> Path:
        from worker.bundled import write_bundled_model

        folder = self.root / "models" / MODEL
        if not folder.exists():
            write_bundled_model(folder)
        entry = {"source": str(folder), "family": "ddpm", "default_width": 32, "default_height": 32,
                 "fixed_size": True, "default_scheduler": "ddim", "default_steps": 4}
        path = self.root / "models.json"
        path.write_text(json.dumps({"models": [{"name": n, **entry} for n in [MODEL, *CHURN_MODELS]]}))
        return path

    def start(self) -> "ChaosStack":
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "ChaosStack":
        self.start_redis()
        self.start_s3()
        env = self.env()
        self.supervisor.add("API", api_command(f"127.0.0.1:{self.api_port}"), env, self.root / "api.log")
        self.supervisor.add("worker", worker_command(), env, self.root / "worker.log")
        threading.Thread(target=self._poll, name="chaos-supervisor", daemon=True).start()
        wait_until(lambda: http_ok(f"{self.url}/healthz"), 90, "the API")
        self.wait_worker_ready()
        store = KeyStore(redis.Redis.from_url(self.redis_url, decode_responses=True))
        self.admin = store.create(role="admin", name="chaos").secret
        return self

    def _poll(self) -> None:
        while not self._polling.wait(0.1):
            self.supervisor.poll()

    def wait_worker_ready(self, other_than: str | None = None, timeout: float = 120) -> None:
        def ready() -> bool:
            return any(w.state == "online" and not w.stale and w.id != other_than for w in self.registry().list())

        wait_until(lambda: worker_ready(self.redis_url) and ready(), timeout, "a ready worker")

    def registry(self) -> WorkerRegistry:
        return WorkerRegistry(redis.Redis.from_url(self.redis_url, decode_responses=True))

    def worker_pid(self) -> int:
        return self.supervisor.get("worker").proc.pid

    def stop(self) -> None:
        self._polling.set()
        self.supervisor.stop(timeout=20)
        stop_all([p for p in (self.redis_proc,) if p is not None], timeout=5)
        if self.s3_proc is not None:
            _stop(self.s3_proc)

    def tail(self, limit: int = 4000) -> str:
        return "\n".join(f"--- {name}\n{(self.root / name).read_text(errors='replace')[-limit:]}"
                         for name in ("api.log", "worker.log") if (self.root / name).exists())

    # Talking to it ----------------------------------------------------------------------------
    def store(self) -> JobStore:
        return JobStore.from_url(self.redis_url)

    def client(self, secret: str | None = None) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {secret or self.admin}"
        return session

    def submit(self, session: requests.Session, deadline_s: float = 60, **body) -> str:
        """Submit, retrying while the API answers 503 (with the Retry-After it sends)."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                response = session.post(f"{self.url}/v1/jobs", json={"model": MODEL, **body}, timeout=10)
            except requests.ConnectionError:
                response = None
            if response is not None and response.status_code == 202:
                return response.json()["id"]
            if time.monotonic() > deadline or (response is not None and response.status_code != 503):
                raise AssertionError(f"submit failed: {response and response.text}")
            time.sleep(float(response.headers.get("Retry-After", 1)) if response is not None else 0.5)

    def wait_all(self, ids: list[str], timeout: float) -> dict[str, dict]:
        """The final records of `ids` (read from Redis), once all are terminal."""
        store, deadline = self.store(), time.monotonic() + timeout
        while True:
            try:
                jobs = {i: store.get(i) for i in ids}
            except redis.ConnectionError:
                jobs = {}
            if jobs and all(j is not None and j.status.terminal for j in jobs.values()):
                return {i: j.to_dict() | {"infra_retries": int(store.redis.hget(store.job_key(i), "infra_retries") or 0)}
                        for i, j in jobs.items()}
            if time.monotonic() > deadline:
                waiting = {i: j.status.value if j else None for i, j in jobs.items()
                           if j is None or not j.status.terminal}
                raise TimeoutError(f"{len(waiting)} jobs not finished: {list(waiting.items())[:5]}\n{self.tail()}")
            time.sleep(0.3)

    def stored_outputs(self, job_id: str) -> list[str]:
        listing = self.s3.client.list_objects_v2(Bucket=self.bucket, Prefix=f"outputs/{job_id}/")
        return sorted(o["Key"] for o in listing.get("Contents", []))


def _answers(url: str) -> bool:
    try:
        return redis.Redis.from_url(url).dbsize() >= 0
    except redis.RedisError:
        return False


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no thread count for process {pid}")
