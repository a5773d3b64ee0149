"""`python -m worker [celery worker options]`: run one Kiln worker (one per GPU)."""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("KILN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from worker.app import celery, queues, settings

    args = [
        "worker",
        # Threads: each takes one job and runs it in the model's shared step batch.
        "--pool=threads",
        f"--concurrency={settings.worker_slots}",
        f"--queues={','.join(queues())}",
        f"--hostname=kiln-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={os.environ.get('KILN_LOG_LEVEL', 'INFO')}",
        *(sys.argv[1:] if argv is None else argv),
    ]
    celery.worker_main(args)


if __name__ == "__main__":
    main()
