"""What the dashboard pages show and what their actions do (Flask test client, real Redis)."""

from __future__ import annotations

import re
import time

import pytest

from tests.admin.seed import seed_jobs
from tests.admin.test_access import make_job


def ids_on(html: str) -> list[str]:
    return re.findall(r'<tr data-job="(job_[0-9a-z]+)"', html)


def next_link(html: str) -> str | None:
    found = re.search(r'href="([^"]+)" rel="next"', html)
    return found.group(1).replace("&amp;", "&") if found else None


def test_jobs_page_filters_searches_sorts_and_pages(admin, services):
    ids = seed_jobs(services.store, 120, time.time() - 3600)
    page = admin.get("/admin/jobs?limit=25").get_data(as_text=True)
    assert ids_on(page) == ids[::-1][:25]
    seen = []
    url = "/admin/jobs?limit=25&order=asc"
    while url:
        html = admin.get(url).get_data(as_text=True)
        seen += ids_on(html)
        url = next_link(html)
    assert seen == ids
    failed = ids_on(admin.get("/admin/jobs?status=failed&limit=100").get_data(as_text=True))
    assert len(failed) == 17 and all(services.store.get(i).status.value == "failed" for i in failed)
    owned = ids_on(admin.get("/admin/jobs?owner=owner2&limit=100").get_data(as_text=True))
    assert len(owned) == 24 and all(services.store.get(i).owner == "owner2" for i in owned)
    found = ids_on(admin.get("/admin/jobs?q=ramen&model=kiln-ddpm-tiny&range=24h").get_data(as_text=True))
    assert len(found) == 20 and all("ramen" in services.store.get(i).params["prompt"] for i in found)
    assert admin.get("/admin/jobs?status=bogus").status_code == 400


def test_bulk_cancel_cancels_only_queued_jobs(admin, services):
    queued = [make_job(services) for _ in range(3)]
    done = make_job(services)
    services.store.cancel(done.id)
    response = admin.post("/admin/jobs/cancel", {"job_id": [queued[0].id, queued[1].id, done.id]})
    assert response.status_code == 302
    statuses = [services.store.get(j.id).status.value for j in queued]
    assert statuses == ["canceled", "canceled", "queued"]
    assert "Canceled 2 queued job(s); 1 not queued" in admin.get("/admin/jobs").get_data(as_text=True)


def test_job_page_shows_parameters_timeline_and_curl(admin, services):
    job = make_job(services, prompt="a lighthouse")
    html = admin.get(f"/admin/jobs/{job.id}").get_data(as_text=True)
    assert "a lighthouse" in html and "Timeline" in html and "curl -X POST" in html
    assert 'data-reload-when-done' in html
    live = admin.get(f"/admin/jobs/live?id={job.id}&id=nonsense").get_json()
    assert live == {"jobs": [{"id": job.id, "status": "queued", "terminal": False, "step": 0, "total": 0, "worker": None,
                              "attempts": 0, "cancel_requested": False}]}


def test_cancel_and_retry_from_the_job_page(app, admin, services):
    key = services.keys.create(role="user", owner="bob")
    client = app.test_client()
    submitted = client.post("/v1/jobs", json={"model": "kiln-ddpm-tiny", "steps": 3, "seed": 42},
                            headers={"Authorization": f"Bearer {key.secret}"}).get_json()
    assert admin.post(f"/admin/jobs/{submitted['id']}/cancel").status_code == 302
    assert services.store.get(submitted["id"]).status.value == "canceled"
    response = admin.post(f"/admin/jobs/{submitted['id']}/retry")
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    new = services.store.get(new_id)
    old = services.store.get(submitted["id"])
    assert new_id != old.id and new.status.value == "queued"
    assert new.params == old.params and new.owner == "bob"
    assert services.store.redis.hget(services.store.job_key(new_id), "key_id") == key.key["id"]
    assert services.keys.get(key.key["id"])["usage"]["submissions"] == 2


def test_keys_create_shows_the_secret_once_and_revoke_works(admin, services):
    response = admin.post("/admin/keys", {"name": "ci", "role": "user", "owner": "team-ci"})
    assert response.status_code == 201
    html = response.get_data(as_text=True)
    secret = re.search(r'id="new-secret">([^<]+)<', html).group(1)
    principal = services.keys.verify(secret)
    assert principal.owner == "team-ci" and principal.role == "user"
    assert secret not in admin.get("/admin/keys").get_data(as_text=True)
    assert admin.post(f"/admin/keys/{principal.key_id}/revoke").status_code == 302
    assert services.keys.verify(secret) is None
    assert "revoked" in admin.get("/admin/keys").get_data(as_text=True)
    refused = admin.post("/admin/keys", {"name": "x", "role": "root"})
    assert refused.status_code == 302 and "role must be one of" in admin.get("/admin/keys").get_data(as_text=True)


def test_overview_shows_counts_queues_and_charts(admin, services):
    seed_jobs(services.store, 40, time.time() - 1800, spacing_s=30)
    services.store.redis.rpush("kiln.default", "message")
    html = admin.get("/admin/").get_data(as_text=True)
    assert html.count("<svg") >= 2 and "kiln.default" in html
    assert "images / min" in html and "Failure rate" in html


def test_workers_page_lists_live_and_stale_workers(admin, services):
    from shared.workers import WorkerRegistry, WorkerStatus

    registry = WorkerRegistry(services.store.redis, services.settings.key_prefix)
    live = WorkerStatus(id="w-live", host="gpu-1", pid=7, device="cuda:0", queues=["kiln.default"], slots=4,
                        started_at=time.time(), models=["kiln-ddpm-tiny"], memory_bytes=2 << 30,
                        memory_budget_bytes=8 << 30, batch_size=3, steps_per_s=12.5)
    registry.announce(live, ttl_s=30)
    services.store.redis.zadd(f"{services.settings.key_prefix}:workers", {"w-gone": time.time() - 120})
    html = admin.get("/admin/workers").get_data(as_text=True)
    assert "gpu-1" in html and "cuda:0" in html and "kiln-ddpm-tiny" in html and "12.5" in html
    assert re.search(r'<tr class="stale">\s*<td><a href="/admin/workers/w-gone"', html)
    assert "3 / 4" not in html and "0 / 4" in html
    assert "cuda:0" in admin.get("/admin/workers/w-live").get_data(as_text=True)


@pytest.mark.slow
def test_jobs_page_pages_through_100k_jobs(admin, services):
    seed_jobs(services.store, 100_000, time.time() - 100_000)
    assert services.store.count() == 100_000
    first = admin.get("/admin/jobs")
    assert first.status_code == 200 and "100,000" in first.get_data(as_text=True)
    second = admin.get(next_link(first.get_data(as_text=True)))
    assert len(ids_on(second.get_data(as_text=True))) == 50
    assert set(ids_on(second.get_data(as_text=True))).isdisjoint(ids_on(first.get_data(as_text=True)))
    searched = admin.get("/admin/jobs?q=no-such-prompt").get_data(as_text=True)
    assert "keep searching older jobs" in searched
    assert admin.get("/admin/").status_code == 200


def test_job_page_shows_the_jobs_lora_adapters(admin, services):
    from shared.ids import new_job_id

    params = {"model": "kiln-shapes", "task": "text-to-image", "prompt": "a large pink circle", "steps": 2,
              "width": 64, "height": 64, "num_images": 1, "seed": 1,
              "loras": [{"name": "kiln-shapes-pink", "scale": 0.8}, {"name": "ink", "scale": 1.0}]}
    job = services.store.create(new_job_id(), "alice", params, "kiln.default")
    html = admin.get(f"/admin/jobs/{job.id}").get_data(as_text=True)
    shown = re.search(r'<dd data-role="loras">(.*?)</dd>', html).group(1)
    assert "kiln-shapes-pink × 0.8" in shown and "ink × 1.0" in shown
    plain = make_job(services)
    assert 'data-role="loras"' not in admin.get(f"/admin/jobs/{plain.id}").get_data(as_text=True)


def test_jobs_page_offers_every_catalog_model_as_a_filter(admin, services):
    html = admin.get("/admin/jobs").get_data(as_text=True)
    names = services.catalog.names()
    assert "kiln-shapes-flux" in names  # the bundled catalog of a full checkout
    assert all(f'<option value="{name}"' in html for name in names)
