"""Workers: each one's host, device, models held, memory, running jobs, batch size, steps/s and
last heartbeat, from the heartbeat records in Redis; stale ones (no recent heartbeat) marked."""

from __future__ import annotations

import time

from flask import abort, render_template

from api.admin import charts
from api.admin.session import page
from api.services import kiln
from shared.workers import WorkerRegistry


def registry() -> WorkerRegistry:
    services = kiln()
    return WorkerRegistry(services.store.redis, services.settings.key_prefix)


@page("/workers")
def workers():
    found = registry().list()
    return render_template("admin/workers.html", workers=found, now=time.time(), meter=charts.meter)


@page("/workers/<worker_id>")
def worker(worker_id: str):
    found = registry().get(worker_id)
    if found is None:
        abort(404, f"no worker {worker_id!r}")
    store = kiln().store
    running = [j for j in (store.get(i) for i in found.running_jobs[:100]) if j is not None]
    return render_template("admin/worker.html", w=found, running=running, now=time.time(), meter=charts.meter)
