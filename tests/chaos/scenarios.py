"""The chaos scenarios, each a function of a running `ChaosStack` and its size, returning its
measured figures (a `Result`). `tests/chaos/test_chaos.py` runs them small in CI;
`python -m tests.chaos.run --full` runs them at full size and prints the table in
docs/reliability.md."""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from tests.chaos.harness import CHURN_MODELS, ChaosStack, rss_bytes, thread_count


@dataclass
class Result:
    name: str
    size: str
    figures: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def _exactly_once(stack: ChaosStack, result: Result, jobs: dict[str, dict], images: int = 1) -> None:
    """Every job succeeded and storage holds exactly its one set of outputs."""
    statuses = Counter(j["status"] for j in jobs.values())
    result.figures["succeeded"] = f"{statuses['succeeded']}/{len(jobs)}"
    result.check(statuses["succeeded"] == len(jobs), f"not all succeeded: {dict(statuses)}")
    for job_id, job in jobs.items():
        want = [f"outputs/{job_id}/{n}.png" for n in range(images)]
        got = stack.stored_outputs(job_id)
        result.check(got == want and [o["key"] for o in job["outputs"]] == want,
                     f"job {job_id}: stored {got}, record {[o['key'] for o in job['outputs']]}")
    attempts = [j["attempts"] for j in jobs.values()]
    result.figures["attempts (total / max)"] = f"{sum(attempts)} / {max(attempts)}"


def worker_kills(stack: ChaosStack, rounds: int, jobs_per_round: int = 6, seed: int = 0) -> Result:
    """SIGKILL the worker at a random point with jobs in flight; the supervisor restarts it."""
    rng, session = random.Random(seed), stack.client()
    result = Result("worker SIGKILL", f"{rounds} rounds × {jobs_per_round} jobs")
    ids, recoveries = [], []
    for _ in range(rounds):
        batch = [stack.submit(session, steps=rng.choice([10, 20, 30]), seed=rng.randrange(10**6))
                 for _ in range(jobs_per_round)]
        ids += batch
        time.sleep(rng.uniform(0.3, 2.0))
        old = stack.registry().list()[0].id
        killed_at = time.monotonic()
        os.kill(stack.worker_pid(), signal.SIGKILL)
        stack.wait_worker_ready(other_than=old)
        stack.wait_all(batch, timeout=180)
        recoveries.append(time.monotonic() - killed_at)
    jobs = stack.wait_all(ids, timeout=180)
    _exactly_once(stack, result, jobs)
    result.figures["re-run after a kill"] = sum(1 for j in jobs.values() if j["attempts"] > 1)
    result.figures["kill → batch done, median s"] = round(statistics.median(recoveries), 1)
    return result


def _api_during(stack: ChaosStack, job_id: str, stop: threading.Event, seen: Counter) -> None:
    """GET a job over and over, counting answers: status code and whether Retry-After came."""
    session = stack.client()
    while not stop.is_set():
        try:
            response = session.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5)
            json_body = response.headers.get("Content-Type", "").startswith("application/json")
            seen[(response.status_code, "Retry-After" in response.headers, json_body)] += 1
        except requests.RequestException:
            seen[("no answer", False, False)] += 1
        time.sleep(0.05)


def redis_kill(stack: ChaosStack, jobs: int = 16, outage_s: float = 3.0) -> Result:
    """SIGKILL Redis with jobs queued and running, restart it from its AOF after `outage_s`."""
    result = Result("Redis SIGKILL + restart (AOF)", f"{jobs} jobs, {outage_s:g} s down")
    session = stack.client()
    ids = [stack.submit(session, steps=30, seed=n) for n in range(jobs)]
    time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
    store = stack.store()
    before = Counter(store.get(i).status.value for i in ids)
    result.figures["at the kill"] = ", ".join(f"{n} {s}" for s, n in sorted(before.items()))
    stop, seen = threading.Event(), Counter()
    poller = threading.Thread(target=_api_during, args=(stack, ids[0], stop, seen), daemon=True)
    poller.start()
    stack.kill_redis()
    time.sleep(outage_s)
    stack.start_redis()
    time.sleep(1.0)
    stop.set()
    poller.join()
    done = stack.wait_all(ids, timeout=240)
    _exactly_once(stack, result, done)
    answers = {f"{code}{' +Retry-After' if retry else ''}": n for (code, retry, _), n in seen.items()}
    result.figures["API answers meanwhile"] = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
    result.check(not any(code == 500 for code, _, _ in seen), f"API answered 500 during the outage: {answers}")
    result.check(all(retry and body for (code, retry, body) in seen if code == 503), "a 503 lacked Retry-After/JSON")
    result.check(len(store.ids(limit=100000)) >= jobs, "job records lost")
    return result


def storage_down(stack: ChaosStack, jobs: int = 8, outage_s: float = 30.0) -> Result:
    """Storage (the S3 server) down while jobs upload: they retry and succeed once it is back."""
    result = Result("storage down during uploads", f"{jobs} jobs, {outage_s:g} s down")
    session = stack.client()
    stack.kill_s3()
    started = time.monotonic()
    ids = [stack.submit(session, steps=4, seed=n) for n in range(jobs)]
    time.sleep(max(0.0, outage_s - (time.monotonic() - started)))
    stack.start_s3()
    back = time.monotonic()
    done = stack.wait_all(ids, timeout=outage_s + 180)
    _exactly_once(stack, result, done)
    result.figures["handed back (infra retries)"] = sum(j["infra_retries"] for j in done.values())
    result.figures["last done after storage returned, s"] = round(
        max(j["finished_at"] for j in done.values()) - (time.time() - (time.monotonic() - back)), 1)
    result.check(all(j["attempts"] == 1 for j in done.values()), "a storage outage counted as a job attempt")
    return result


def burst(stack: ChaosStack, total: int = 1000, keys: int = 10, steps: int = 2,
          fairness: float = 0.10, p99_ms: float = 100.0) -> Result:
    """`total` submissions from `keys` keys at once against one worker: all finish, each key's share
    of the first half finished is within `fairness` of equal, job reads stay fast meanwhile."""
    from shared.auth import KeyStore

    import redis

    result = Result("burst", f"{total} jobs from {keys} keys, {steps} steps")
    store = KeyStore(redis.Redis.from_url(stack.redis_url, decode_responses=True))
    secrets = [store.create(role="user", name=f"burst-{k}").secret for k in range(keys)]
    ids: dict[int, list[str]] = {k: [] for k in range(keys)}
    barrier = threading.Barrier(keys)

    def submit_all(k: int) -> None:
        session = stack.client(secrets[k])
        barrier.wait()
        for n in range(total // keys):
            ids[k].append(stack.submit(session, steps=steps, seed=n))

    latencies, stop = [], threading.Event()

    def read_jobs() -> None:
        sessions = [stack.client(s) for s in secrets]
        while not stop.is_set():
            k = random.randrange(keys)
            if ids[k]:
                t0 = time.perf_counter()
                sessions[k].get(f"{stack.url}/v1/jobs/{random.choice(ids[k])}", timeout=10)
                latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)

    submitters = [threading.Thread(target=submit_all, args=(k,)) for k in range(keys)]
    reader = threading.Thread(target=read_jobs, daemon=True)
    started = time.monotonic()
    for thread in submitters + [reader]:
        thread.start()
    for thread in submitters:
        thread.join()
    result.figures["submitted in, s"] = round(time.monotonic() - started, 1)
    jobs = stack.wait_all([i for k in ids for i in ids[k]], timeout=total * 2 + 120)
    stop.set()
    reader.join()
    result.figures["all done in, s"] = round(time.monotonic() - started, 1)
    statuses = Counter(j["status"] for j in jobs.values())
    result.check(statuses["succeeded"] == total, f"not all succeeded: {dict(statuses)}")
    result.figures["succeeded"] = f"{statuses['succeeded']}/{total}"
    owner_of = {i: k for k in ids for i in ids[k]}
    first_half = sorted(jobs.values(), key=lambda j: j["finished_at"])[: total // 2]
    shares = Counter(owner_of[j["id"]] for j in first_half)
    fair = total / 2 / keys
    spread = max(abs(shares[k] - fair) / fair for k in range(keys))
    result.figures["share of first half per key (min–max)"] = f"{min(shares.values())}–{max(shares.values())} (equal {fair:g})"
    result.check(spread <= fairness, f"unfair: worst key off by {spread:.0%} > {fairness:.0%}")
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan")
    result.figures["GET /v1/jobs/<id> p50 / p99 ms"] = f"{statistics.median(latencies) * 1000:.0f} / {p99:.0f} ({len(latencies)} reads)"
    result.check(p99 <= p99_ms, f"GET p99 {p99:.0f} ms > {p99_ms:g} ms")
    return result


def model_churn(stack: ChaosStack, jobs: int = 200, group: int = 4, tolerance: float = 0.10) -> Result:
    """Jobs cycling over more models than the pipeline cache holds (it holds one): the worker's
    RSS after the run is within `tolerance` of its level after the first cycle."""
    models = CHURN_MODELS
    result = Result("model churn soak", f"{jobs} jobs over {len(models)} models, cache holds 1")
    session, pid = stack.client(), stack.worker_pid()
    per_cycle = group * len(models)
    after_first = threads_first = None
    ids = []
    for start in range(0, jobs, group):
        model = models[(start // group) % len(models)]
        batch = [stack.submit(session, model=model, steps=2, seed=start + n) for n in range(min(group, jobs - start))]
        ids += batch
        stack.wait_all(batch, timeout=120)
        if start + group == per_cycle:
            after_first, threads_first = rss_bytes(pid), thread_count(pid)
    done = stack.wait_all(ids, timeout=120)
    result.check(pid == stack.worker_pid(), "the worker restarted during the soak")
    statuses = Counter(j["status"] for j in done.values())
    result.check(statuses["succeeded"] == jobs, f"not all succeeded: {dict(statuses)}")
    end, threads_end = rss_bytes(pid), thread_count(pid)
    growth = (end - after_first) / after_first
    result.figures["RSS after cycle 1 → end, MiB"] = f"{after_first / 2**20:.0f} → {end / 2**20:.0f} ({growth:+.1%})"
    result.figures["threads after cycle 1 → end"] = f"{threads_first} → {threads_end}"
    result.check(abs(growth) <= tolerance, f"RSS moved {growth:+.1%} (> {tolerance:.0%})")
    return result
