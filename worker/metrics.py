"""The worker's own HTTP endpoint, on `KILN_METRICS_PORT` (default 9400; 0 turns it off).

A daemon thread serves:

* `GET /metrics` — `shared.metrics.WORKER_REGISTRY` (queue wait, run time, steps, batch size,
  pipeline cache) plus device memory, in the Prometheus text format;
* `GET /livez`  — 200 while the process runs (Kubernetes liveness);
* `GET /healthz` — 200 once the worker is ready (`mark_ready`) and its health check passes
  (Redis answers), else 503 with the reason (readiness, container HEALTHCHECK).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.metrics import NAMESPACE, WORKER_REGISTRY, bind_collector

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], str | None]  # returns None when healthy, else what is wrong

# kiln_device_memory_<name>_bytes{device="cuda:N"}, read from torch.cuda at scrape time.
DEVICE_MEMORY_READINGS = {
    "allocated": "Bytes held by live tensors",
    "reserved": "Bytes reserved by torch's caching allocator",
    "max_allocated": "Peak bytes held by tensors since start",
    "free": "Free bytes on the device (all processes)",
    "total": "Total bytes on the device",
}


class DeviceMemoryCollector(Collector):
    """CUDA memory of this process's device, read when scraped; nothing on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device

    def collect(self) -> Iterator[Any]:
        import torch

        if not self.device.startswith("cuda") or not torch.cuda.is_available():
            return
        index = torch.device(self.device).index
        index = torch.cuda.current_device() if index is None else index
        label = [f"cuda:{index}"]
        free, total = torch.cuda.mem_get_info(index)
        values = {"allocated": torch.cuda.memory_allocated(index), "reserved": torch.cuda.memory_reserved(index),
                  "max_allocated": torch.cuda.max_memory_allocated(index), "free": free, "total": total}
        for name, doc in DEVICE_MEMORY_READINGS.items():
            family = GaugeMetricFamily(f"{NAMESPACE}_device_memory_{name}_bytes", doc, labels=["device"])
            family.add_metric(label, values[name])
            yield family


class _State:
    def __init__(self, health: HealthCheck | None) -> None:
        self.ready = threading.Event()
        self.health = health

    def problem(self) -> str | None:
        if not self.ready.is_set():
            return "worker not ready yet"
        if self.health is None:
            return None
        try:
            return self.health()
        except Exception as exc:  # a failing check is an unhealthy answer, not a crash
            return f"{type(exc).__name__}: {exc}"


def _handler_class(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(WORKER_REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/livez":
                self._json(200, {"status": "ok"})
            elif path == "/healthz":
                problem = state.problem()
                self._json(503 if problem else 200,
                           {"status": "unavailable", "reason": problem} if problem else {"status": "ok"})
            else:
                self._json(404, {"error": {"code": "not_found", "message": f"no {path}; try /metrics, "
                                           "/healthz or /livez"}})

        def _json(self, code: int, body: dict) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s: keep quiet
            logger.debug("metrics http: " + format, *args)

    return Handler


class MetricsServer:
    """The worker's HTTP endpoint on a daemon thread."""

    def __init__(self, port: int, host: str = "0.0.0.0", health: HealthCheck | None = None) -> None:
        self._state = _State(health)
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self._state))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="kiln-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> "MetricsServer":
        self._thread.start()
        logger.info("worker metrics on port %d (/metrics, /healthz, /livez)", self.port)
        return self

    def mark_ready(self) -> None:
        self._state.ready.set()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def start_metrics_server(port: int, *, device: str | None = None, health: HealthCheck | None = None,
                         host: str = "0.0.0.0") -> MetricsServer | None:
    """Serve the worker's metrics on `port`; None when `port` is 0 or already taken.

    A taken port is logged, not fatal: several workers on one host (the local stack, the
    multi-worker tests) must still run, and only the first of them serves metrics there.
    """
    if port == 0:
        logger.info("worker metrics are off (KILN_METRICS_PORT=0)")
        return None
    if device is not None:
        bind_device_memory(device)
    try:
        server = MetricsServer(port, host, health)
    except OSError as exc:
        logger.warning("worker metrics not served: port %d: %s", port, exc.strerror or exc)
        return None
    return server.start()


def bind_device_memory(device: str) -> None:
    """Report `device`'s CUDA memory on `/metrics` (nothing for a CPU device)."""
    bind_collector("device_memory", DeviceMemoryCollector(device))


def redis_health(client: Any) -> HealthCheck:
    """A health check that passes while `client` (a redis.Redis) answers PING."""

    def check() -> str | None:
        return None if client.ping() else "redis did not answer PING"

    return check
