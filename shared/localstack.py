"""The whole stack on one machine: `python -m shared.localstack` (what `make up` runs).

Starts a Redis server of its own (AOF on, no eviction) on a free or configured port, the API
under gunicorn, and one worker, all on embedded defaults (local-folder storage, the bundled
model), and supervises them: a process that dies is restarted with backoff (1, 2, 4 … 30 s, as
compose's `restart:` policy does). The banner comes once the worker reports itself ready (its
default model loaded). Where the stack's Redis is goes into `var/localstack.json`, which
`python -m api.keys` reads. Ctrl-C (or SIGTERM) stops the worker, then the API, then Redis.
The same process commands are what the tests and the containers run.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing, suppress
from dataclasses import dataclass, field
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


def stop_in_order(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM one process at a time, each waited for (SIGKILL after `timeout`) before the next."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


def _child_setup() -> None:
    """In each child, before exec: its own process group, so Ctrl-C in the terminal reaches only
    the supervisor (which stops the children in order), and SIGTERM when the supervisor dies."""
    os.setpgrp()
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    """One supervised process: how to start it and its restart bookkeeping."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    log: Path | None = None  # where its output goes; default: the terminal (Redis: nowhere)
    proc: subprocess.Popen | None = None
    restarts: int = 0  # consecutive quick deaths, for the backoff
    started_at: float = 0.0
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)  # exit codes seen

    def start(self) -> None:
        out = open(self.log, "ab") if self.log else (subprocess.DEVNULL if self.name == "redis" else None)
        try:
            self.proc = subprocess.Popen(self.command, env=self.env, cwd=REPO_ROOT, preexec_fn=_child_setup,
                                         stdout=out, stderr=subprocess.STDOUT if self.log else None)
        finally:
            if self.log:
                out.close()
        self.started_at, self.restart_at = time.monotonic(), None


class Supervisor:
    """Starts services, restarts any that exit (backoff 1, 2, 4 … `max_backoff_s`; a service that
    ran `healthy_after_s` before dying starts again after 1 s), and stops them in reverse order."""

    def __init__(self, max_backoff_s: float = 30.0, healthy_after_s: float = 60.0, say=None) -> None:
        self.services: list[Service] = []
        self.max_backoff_s, self.healthy_after_s = max_backoff_s, healthy_after_s
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))

    def add(self, name: str, command: list[str], env: dict[str, str] | None = None,
            log: Path | None = None) -> Service:
        service = Service(name, command, env, log)
        service.start()
        self.services.append(service)
        return service

    def get(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def poll(self, now: float | None = None) -> None:
        """Notice exits and restart what is due; call it every fraction of a second."""
        now = time.monotonic() if now is None else now
        for service in self.services:
            code = service.proc.poll() if service.proc else None
            if service.restart_at is None and code is not None:
                service.history.append(code)
                service.restarts = 1 if now - service.started_at >= self.healthy_after_s else service.restarts + 1
                delay = min(2.0 ** (service.restarts - 1), self.max_backoff_s)
                service.restart_at = now + delay
                self.say(f"kiln: the {service.name} exited with code {code}; restarting it in {delay:.0f}s")
            elif service.restart_at is not None and now >= service.restart_at:
                service.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop every service, last started first, one at a time (worker → API → Redis)."""
        stop_in_order([s.proc for s in reversed(self.services) if s.proc is not None], timeout)


def state_path(var: Path | None = None) -> Path:
    """`var/localstack.json`: where a running local stack says where its Redis and API are."""
    return Path(var or os.environ.get("KILN_VAR_DIR") or REPO_ROOT / "var") / "localstack.json"


def read_state(var: Path | None = None) -> dict | None:
    """The running local stack's state file, or None when there is none (or its process is gone)."""
    try:
        state = json.loads(state_path(var).read_text())
        os.kill(int(state["pid"]), 0)
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM stops the stack like Ctrl-C does."""
    raise KeyboardInterrupt


def stack_env(var: Path, redis_port: int, url: str) -> dict[str, str]:
    return {**os.environ, "KILN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "KILN_PUBLIC_URL": url,
            "KILN_STORAGE": os.environ.get("KILN_STORAGE", "local"),
            # Single-user mode unless told otherwise: said out loud in the banner.
            "KILN_AUTH": os.environ.get("KILN_AUTH", "disabled"),
            "KILN_LOG_FORMAT": os.environ.get("KILN_LOG_FORMAT", "text"),  # JSON is for log shippers
            "KILN_STORAGE_ROOT": os.environ.get("KILN_STORAGE_ROOT", str(var / "outputs")),
            "KILN_MODELS_DIR": os.environ.get("KILN_MODELS_DIR", str(var / "models"))}


def worker_ready(redis_url: str) -> bool:
    """True once a worker's heartbeat says it is ready (default model loaded)."""
    import redis

    from shared.workers import WorkerRegistry, WorkerState

    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        return any(w.state == WorkerState.READY and not w.stale for w in WorkerRegistry(client).list())
    except redis.RedisError:  # restarting, replaying its AOF …: not ready
        return False
    finally:
        client.close()


def wait_supervised(supervisor: Supervisor, check, timeout: float, what: str) -> None:
    """`wait_until`, restarting whatever dies meanwhile."""
    def ready() -> bool:
        supervisor.poll()
        return check()

    wait_until(ready, timeout, what)


def main() -> int:
    var = Path(os.environ.get("KILN_VAR_DIR", REPO_ROOT / "var"))
    (var / "redis").mkdir(parents=True, exist_ok=True)
    redis_port = int(os.environ.get("KILN_REDIS_PORT") or free_port())
    api_port = int(os.environ.get("KILN_API_PORT", "8000"))
    if not port_is_free(api_port):
        api_port = free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = stack_env(var, redis_port, url)
    subprocess.run([PYTHON, "-m", "worker.bundled", str(Path(env["KILN_MODELS_DIR"]) / "kiln-ddpm-tiny")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    supervisor = Supervisor()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        supervisor.add("redis", redis_command(redis_port, var / "redis"))
        wait_supervised(supervisor, lambda: redis_ping(redis_port), 15, "redis")
        state_path(var).write_text(json.dumps({"pid": os.getpid(), "redis_url": env["KILN_REDIS_URL"], "api_url": url,
                                               "auth": env["KILN_AUTH"]}))
        supervisor.add("API", api_command(f"127.0.0.1:{api_port}"), env)
        supervisor.add("worker", worker_command(), env)
        wait_supervised(supervisor, lambda: http_ok(f"{url}/healthz"), 60, "the API")
        print("kiln: waiting for the worker to load its default model …", file=sys.stderr, flush=True)
        wait_supervised(supervisor, lambda: worker_ready(env["KILN_REDIS_URL"]), 300, "the worker")
        _print_banner(url, redis_port, env["KILN_AUTH"])
        while True:
            supervisor.poll()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping Kiln (worker, API, then Redis) …", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave Redis behind
        supervisor.stop()
        with suppress(OSError):
            state_path(var).unlink()


def keys_command() -> str:
    """How the banner tells a user to run `api.keys` (this interpreter, relative to the repo)."""
    python = Path(PYTHON)
    shown = python.relative_to(REPO_ROOT) if python.is_relative_to(REPO_ROOT) else python
    return f"{shown} -m api.keys create --role admin --name me"


def _print_banner(url: str, redis_port: int, auth: str) -> None:
    body = json.dumps({"model": "kiln-shapes", "prompt": "a large red circle in the centre on a white background",
                       "seed": 1})
    if auth == "disabled":
        mode = ("AUTH DISABLED: single-user mode, every request acts as a local admin "
                "(KILN_AUTH=enabled make up to require API keys)")
        header = ""
    else:
        mode = (f"API keys required (KILN_AUTH=enabled). Create the first (admin) key, in another terminal:\n"
                f"  {keys_command()}\n"
                f"then export its \"secret\":  export KILN_API_KEY=<secret>")
        header = ' -H "Authorization: Bearer $KILN_API_KEY"'
    print(f"""
Kiln is up.  API: {url}   (Redis on 127.0.0.1:{redis_port}; Ctrl-C stops everything)
{mode}

  # submit a job, then poll it until its status is "succeeded"
  curl -s -X POST {url}/v1/jobs{header} -H 'Content-Type: application/json' -d '{body}'
  curl -s{header} {url}/v1/jobs/<job id>
  # download the image
  curl -s{header} -o out.png {url}/v1/jobs/<job id>/outputs/0
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())
