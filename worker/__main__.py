"""`python -m worker [celery worker options]`: run one Kiln worker (one per GPU)."""

from __future__ import annotations

import os
import sys

from shared.logging import configure_logging
from shared.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    configure_logging(get_settings().log_level, get_settings().log_format)
    from worker.app import celery, process

    process.start_metrics()  # /livez answers while Celery starts; /healthz once it is ready

    args = [
        "worker",
        # Threads: each takes one job and runs it in the model's shared step batch.
        "--pool=threads",
        f"--concurrency={process.settings.worker_slots}",
        f"--queues={','.join(process.queues())}",
        f"--hostname=kiln-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={process.settings.log_level}",
        *(sys.argv[1:] if argv is None else argv),
    ]
    celery.worker_main(args)


if __name__ == "__main__":
    main()
