"""Fill a job store fast (a Redis pipeline, the same hash fields and indexes the CREATE and
FINISH scripts write) for paging tests, the 100 000-job measurement and the screenshots."""

from __future__ import annotations

import json
import random

from shared.jobs.store import JobStore

STATUSES = ("succeeded", "succeeded", "succeeded", "failed", "canceled", "queued", "running")
PROMPTS = ("a red fox in the snow", "lighthouse at dusk, oil painting", "a bowl of ramen, studio photo",
           "isometric city block", "portrait of a cat astronaut", "misty forest, morning light")


def seed_jobs(store: JobStore, count: int, start: float, spacing_s: float = 1.0, owners: int = 5,
              seed: int = 0, chunk: int = 5000) -> list[str]:
    """Insert `count` jobs created `spacing_s` apart from `start`; returns their ids, oldest first."""
    rng = random.Random(seed)
    ids = []
    pipe = store.redis.pipeline(transaction=False)
    for n in range(count):
        job_id = f"job_{int((start + n * spacing_s) * 1000):012x}{n:016d}"
        ids.append(job_id)
        _add(pipe, store, job_id, start + n * spacing_s, rng, n)
        if n % chunk == chunk - 1:
            pipe.execute()
    pipe.execute()
    return ids


def _add(pipe, store: JobStore, job_id: str, created: float, rng: random.Random, n: int) -> None:
    status = STATUSES[n % len(STATUSES)]
    owner = f"owner{n % 5}"
    params = {"model": "kiln-ddpm-tiny", "task": "unconditional", "prompt": f"{PROMPTS[n % len(PROMPTS)]} #{n}",
              "width": 32, "height": 32, "steps": 20, "seed": n, "num_images": 1, "scheduler": "ddim"}
    record = {"id": job_id, "owner": owner, "model": "kiln-ddpm-tiny", "queue": "kiln.default",
              "params": json.dumps(params), "status": status, "created_at": repr(created),
              "updated_at": repr(created), "attempts": 1 if status != "queued" else 0,
              "progress_total": 20, "progress_step": 20 if status == "succeeded" else rng.randrange(20)}
    if status in ("succeeded", "failed", "canceled"):
        wait, run = rng.uniform(0.05, 2.0), rng.uniform(0.5, 4.0)
        record.update(started_at=repr(created + wait), finished_at=repr(created + wait + run), worker="w-seed",
                      timings=json.dumps({"queue_wait_s": round(wait, 4), "total_s": round(run, 4)}))
        if status == "succeeded":
            record["outputs"] = json.dumps([{"index": 0, "key": f"outputs/{job_id}/0.png", "size": 900,
                                             "seed": n, "content_type": "image/png", "width": 32, "height": 32}])
        if status == "failed":
            record["error"] = json.dumps({"code": "model_error", "message": "the model raised"})
    pipe.hset(store.job_key(job_id), mapping=record)
    pipe.zadd(f"{store.prefix}:jobs:all", {job_id: created})
    pipe.zadd(f"{store.prefix}:jobs:status:{status}", {job_id: created})
    pipe.zadd(f"{store.prefix}:jobs:owner:{owner}", {job_id: created})
