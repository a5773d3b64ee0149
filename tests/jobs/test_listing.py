"""The one job listing (`shared.jobs.query`) through both of its doors — the API's
`GET /v1/jobs` and the dashboard's jobs table — when many jobs share one creation time."""

from __future__ import annotations

import html
import re

import pytest

from api.app import create_app
from shared.jobs.query import JobQuery, decode_cursor, encode_cursor, find_jobs
from shared.settings import load_settings
from tests.admin.seed import seed_jobs

START = 1_700_000_000.0
TIED = 600  # jobs created in the same instant: more than one page window (max_scan) holds


@pytest.fixture
def app(redis_url, tmp_path):
    settings = load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "outputs",
                             models_dir=tmp_path / "models", auth="disabled")
    return create_app(settings)


@pytest.fixture
def store(app):
    return app.extensions["kiln"].store


@pytest.fixture
def tied(store) -> list[str]:
    """TIED jobs with one creation time, between two jobs a second older and newer."""
    return seed_jobs(store, 1, START - 1) + seed_jobs(store, TIED, START, spacing_s=0.0) + seed_jobs(store, 1, START + 1)


def api_walk(client, limit: int, query: str = "") -> list[str]:
    seen, cursor = [], ""
    for _ in range(1000):
        body = client.get(f"/v1/jobs?limit={limit}{query}{cursor}").json
        seen += [job["id"] for job in body["jobs"]]
        if not body["next_cursor"]:
            return seen
        cursor = f"&cursor={body['next_cursor']}"
    raise AssertionError("paging did not end")


def query_walk(store, **fields) -> list[str]:
    seen, cursor = [], None
    for _ in range(1000):
        page = find_jobs(store, JobQuery(**fields, cursor=cursor))
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            return seen
        cursor = decode_cursor(page.next_cursor)
    raise AssertionError("paging did not end")


def dashboard_walk(client, query: str) -> list[str]:
    seen, url = [], f"/admin/jobs?{query}"
    for _ in range(1000):
        text = client.get(url).get_data(as_text=True)
        seen += re.findall(r'<a href="/admin/jobs/(job_[0-9a-f]+)"><code>', text)
        following = re.search(r'<a class="btn" href="([^"]+)" rel="next">', text)
        if following is None:
            return seen
        url = html.unescape(following.group(1))
    raise AssertionError("paging did not end")


def once_each(seen: list[str], expected: list[str]) -> bool:
    return len(seen) == len(set(seen)) and set(seen) == set(expected)


@pytest.mark.parametrize("limit", [7, 100])
def test_api_listing_returns_every_tied_job_once(app, tied, limit):
    seen = api_walk(app.test_client(), limit)
    assert once_each(seen, tied)
    assert seen[0] == tied[-1] and seen[-1] == tied[0]  # newest first around the tie


def test_api_listing_of_one_owner_pages_through_a_tie(app, tied):
    owner = app.extensions["kiln"].store.get(tied[5]).owner
    expected = [i for i in tied if app.extensions["kiln"].store.get(i).owner == owner]
    assert once_each(api_walk(app.test_client(), 2, f"&owner={owner}"), expected)


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("limit", [9, 50])
def test_admin_query_returns_every_tied_job_once(store, tied, order, limit):
    seen = query_walk(store, limit=limit, order=order)
    assert once_each(seen, tied)
    assert seen[0] == (tied[-1] if order == "desc" else tied[0])


def test_admin_query_with_a_small_window_still_ends(store, tied):
    """A window smaller than the tie: every page reads a few entries, none is read twice."""
    assert once_each(query_walk(store, limit=50, max_scan=40, model="kiln-ddpm-tiny"), tied)


def test_dashboard_table_pages_through_the_tie(app, tied):
    assert once_each(dashboard_walk(app.test_client(), "limit=25"), tied)
    assert once_each(dashboard_walk(app.test_client(), "limit=25&order=asc"), tied)


def test_a_cursor_made_before_the_merge_still_pages(app, tied):
    """Cursors are base64 of `<score> <id>`, as clients already hold them."""
    newest = app.extensions["kiln"].store.get(tied[-1])
    legacy = encode_cursor(newest.created_at, newest.id)
    body = app.test_client().get(f"/v1/jobs?limit=100&cursor={legacy}").json
    assert [job["id"] for job in body["jobs"]] == api_walk(app.test_client(), 100)[1:101]


def test_a_foreign_cursor_is_refused_naming_the_cursor(app):
    response = app.test_client().get("/v1/jobs?cursor=bm90LWEtY3Vyc29y")
    assert response.status_code == 422 and response.json["error"]["field"] == "cursor"
    assert app.test_client().get("/admin/jobs?cursor=bm90LWEtY3Vyc29y").status_code == 400
