"""`GET /v1/jobs`: filters (status, model, created time) and cursor pagination over the indexes."""

from __future__ import annotations

import time

import pytest

GOOD = {"model": "kiln-ddpm-tiny", "steps": 2, "seed": 1}


def _all_pages(client, query: str = "", limit: int = 3) -> tuple[list[str], int]:
    ids, cursor, pages = [], None, 0
    while True:
        url = f"/v1/jobs?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).json
        ids += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            return ids, pages


def test_pages_cover_every_job_once_newest_first(client):
    ids = [client.post("/v1/jobs", json=GOOD).json["id"] for _ in range(7)]
    listed, pages = _all_pages(client)
    assert listed == ids[::-1]
    assert pages == 3


def test_filters_status_model_and_time(client):
    ids = [client.post("/v1/jobs", json=GOOD).json["id"] for _ in range(5)]
    middle = time.time()
    time.sleep(0.01)
    late = [client.post("/v1/jobs", json=GOOD).json["id"] for _ in range(2)]
    for job_id in ids[:2]:
        client.post(f"/v1/jobs/{job_id}/cancel")
    assert _all_pages(client, "&status=canceled", limit=1)[0] == ids[:2][::-1]
    assert set(_all_pages(client, "&status=queued")[0]) == set(ids[2:] + late)
    assert _all_pages(client, f"&created_after={middle}")[0] == late[::-1]
    assert _all_pages(client, f"&created_before={middle}")[0] == ids[::-1]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle + 3600)) + "Z"
    assert len(_all_pages(client, f"&created_before={iso}")[0]) == 7
    assert _all_pages(client, "&model=other")[0] == []


def test_a_page_reads_a_bounded_part_of_the_index(client, app):
    """With a filter that matches nothing, a page still reads at most max_scan entries."""
    from shared.jobs.query import JobQuery, decode_cursor, find_jobs

    for _ in range(6):
        client.post("/v1/jobs", json=GOOD)
    store = app.extensions["kiln"].store
    page = find_jobs(store, JobQuery(model="none", max_scan=4))
    assert page.jobs == [] and page.next_cursor is not None
    page = find_jobs(store, JobQuery(model="none", max_scan=4, cursor=decode_cursor(page.next_cursor)))
    assert page.jobs == [] and page.next_cursor is None


@pytest.mark.parametrize("query, field", [("status=done", "status"), ("limit=0", "limit"), ("limit=101", "limit"),
                                          ("limit=x", "limit"), ("cursor=%%%", "cursor"), ("cursor=abc", "cursor"),
                                          ("created_after=yesterday", "created_after"),
                                          ("created_before=nan", "created_before"),
                                          ("created_after=-1", "created_after")])
def test_bad_query_is_422(client, query, field):
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 422, response.json
    assert response.json["error"]["field"] == field


def test_paging_with_an_unmatched_filter_reaches_the_oldest_job(client, app):
    """A page that starts at a cursor re-reads the cursor's own entry and drops it: that must not
    be mistaken for the end of the index (regression: paging stopped after the second page)."""
    from shared.jobs.query import JobQuery, decode_cursor, find_jobs

    store = app.extensions["kiln"].store
    ids = [client.post("/v1/jobs", json=GOOD).json["id"] for _ in range(9)]
    seen_pages, cursor = 0, None
    while True:
        page = find_jobs(store, JobQuery(model="none", max_scan=4, cursor=cursor))
        assert page.jobs == []
        seen_pages += 1
        if page.next_cursor is None:
            break
        cursor = decode_cursor(page.next_cursor)
    assert seen_pages == 3 and cursor[1] == ids[1]  # 4 + 4 entries read, the third page holds the last one
