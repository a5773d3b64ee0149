"""The whole stack on one machine: `python -m shared.localstack` (what `make up` runs).

Starts a Redis server of its own (AOF on, no eviction) on a free or configured port, the API
under gunicorn, and one worker, all on embedded defaults (local-folder storage, the bundled
model); prints the API URL and an example; Ctrl-C stops every process it started. The same
process commands are what the tests and the containers run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

from shared.settings import REPO_ROOT

PYTHON = sys.executable


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def redis_server_binary() -> str:
    found = os.environ.get("KILN_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is not installed: run `apt-get install redis-server` "
                           "(make up does this when it runs as root) or set KILN_REDIS_SERVER")
    return found


def redis_command(port: int, data_dir: Path) -> list[str]:
    """Redis as Kiln wants it: AOF every second so queued jobs survive a restart, no eviction."""
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--protected-mode", "yes"]


def api_command(bind: str, workers: int = 2, threads: int = 8) -> list[str]:
    """gunicorn with the API's evented worker (`api.gunicorn_worker`): connections are greenlets,
    so open event streams never starve other requests; `threads` sizes its native thread pool."""
    return [PYTHON, "-m", "gunicorn", "--bind", bind, "--workers", str(workers), "--threads", str(threads),
            "--worker-class", "api.gunicorn_worker.KilnWorker", "--graceful-timeout", "10",
            "--access-logfile", "-", "api.wsgi:app"]


def worker_command() -> list[str]:
    return [PYTHON, "-m", "worker"]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def redis_ping(port: int) -> bool:
    with closing(socket.create_connection(("127.0.0.1", port), timeout=1)) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def stop_all(procs: list[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM in reverse start order, then SIGKILL whatever is left after `timeout`."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in reversed(procs):
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM stops the stack like Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> int:
    var = Path(os.environ.get("KILN_VAR_DIR", REPO_ROOT / "var"))
    (var / "redis").mkdir(parents=True, exist_ok=True)
    redis_port = int(os.environ.get("KILN_REDIS_PORT") or free_port())
    api_port = int(os.environ.get("KILN_API_PORT", "8000"))
    if not port_is_free(api_port):
        api_port = free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = {**os.environ, "KILN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "KILN_PUBLIC_URL": url,
           "KILN_STORAGE": os.environ.get("KILN_STORAGE", "local"),
           # Single-user mode unless told otherwise: said out loud in the banner.
           "KILN_AUTH": os.environ.get("KILN_AUTH", "disabled"),
           "KILN_LOG_FORMAT": os.environ.get("KILN_LOG_FORMAT", "text"),  # JSON is for log shippers
           "KILN_STORAGE_ROOT": os.environ.get("KILN_STORAGE_ROOT", str(var / "outputs")),
           "KILN_MODELS_DIR": os.environ.get("KILN_MODELS_DIR", str(var / "models"))}
    subprocess.run([PYTHON, "-m", "worker.bundled", str(Path(env["KILN_MODELS_DIR"]) / "kiln-ddpm-tiny")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        procs.append(subprocess.Popen(redis_command(redis_port, var / "redis"), stdout=subprocess.DEVNULL))
        wait_until(lambda: redis_ping(redis_port), 15, "redis")
        procs.append(subprocess.Popen(api_command(f"127.0.0.1:{api_port}"), env=env, cwd=REPO_ROOT))
        procs.append(subprocess.Popen(worker_command(), env=env, cwd=REPO_ROOT))
        wait_until(lambda: http_ok(f"{url}/healthz"), 60, "the API")
        _print_banner(url, redis_port, env["KILN_AUTH"])
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a Kiln process exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Kiln …", file=sys.stderr)
        return 0
    finally:
        stop_all(procs)


def _print_banner(url: str, redis_port: int, auth: str) -> None:
    body = json.dumps({"model": "kiln-shapes", "prompt": "a large red circle in the centre on a white background",
                       "seed": 1})
    mode = ("AUTH DISABLED: single-user mode, every request acts as a local admin "
            "(KILN_AUTH=enabled make up to require API keys)" if auth == "disabled"
            else "API keys required (KILN_AUTH=enabled)")
    print(f"""
Kiln is up.  API: {url}   (Redis on 127.0.0.1:{redis_port}; Ctrl-C stops everything)
{mode}

  # submit a job, then poll it until its status is "succeeded"
  curl -s -X POST {url}/v1/jobs -H 'Content-Type: application/json' -d '{body}'
  curl -s {url}/v1/jobs/<job id>
  # download the image
  curl -s -o out.png {url}/v1/jobs/<job id>/outputs/0
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())
