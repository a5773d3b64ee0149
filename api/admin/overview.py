"""The front page: jobs per status, throughput, latencies, failure rate and queue depths."""

from __future__ import annotations

from flask import render_template

from api.admin import charts
from api.admin.session import page
from api.services import kiln
from shared.jobs.query import overview as compute_overview


@page("/")
def overview():
    services = kiln()
    queues = sorted({spec.celery_queue for spec in services.catalog})
    data = compute_overview(services.store, queues)
    return render_template(
        "admin/overview.html", o=data,
        created_chart=charts.bars(data.hourly_created, highlight=data.hourly_failed,
                                  labels=("24 h ago", "now"), title="jobs created per hour (failed in red)"),
        images_chart=charts.bars(data.minute_images, labels=("60 min ago", "now"),
                                 title="images finished per minute"))
