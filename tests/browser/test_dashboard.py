"""The dashboard in a real headless Chromium against the running stack (API under gunicorn, a
Celery worker with one slot, the bundled model): sign in, watch a job finish with its image,
cancel a queued job, filter, open a worker, create and revoke a key. Screenshots of every page
go to artifacts/screenshots/."""

from __future__ import annotations

import re
import time

import requests

from tests.admin.seed import FINISHED, seed_jobs
from tests.browser.conftest import shoot

MODEL = "kiln-ddpm-tiny"


def sign_in(page, stack) -> None:
    page.goto(f"{stack.url}/admin/jobs")
    assert "/admin/login" in page.url
    page.fill('input[name="key"]', "kiln_not_a_key")
    page.click("text=Sign in >> nth=-1")
    assert page.locator(".flash.error").inner_text().startswith("That key is unknown")
    shoot(page, "login")
    page.fill('input[name="key"]', stack.admin_key)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(re.compile(r"/admin/jobs$"))


def cancel_a_queued_job(page, stack, user_key: str) -> str:
    """With the one slot busy on a long job, a second job stays queued: cancel it in bulk."""
    long = stack.submit(key=user_key, model=MODEL, steps=150, scheduler="ddpm", seed=5)
    queued = stack.submit(key=user_key, model=MODEL, steps=2, seed=6)
    stack.wait(long["id"], until=lambda j: j["progress"]["step"] >= 1)
    page.goto(f"{stack.url}/admin/jobs")
    page.locator(f'tr[data-job="{long["id"]}"] [data-role="status"]').filter(has_text="running").wait_for()
    page.check(f'input[name="job_id"][value="{queued["id"]}"]')
    shoot(page, "jobs", full_page=False)
    page.click("text=Cancel selected queued jobs")
    assert "Canceled 1 queued job(s)" in page.locator(".flash").inner_text()
    assert stack.job(queued["id"])["status"] == "canceled"
    return long["id"]


def watch_a_job_finish(page, stack, long_id: str, user_key: str) -> None:
    """A job waits behind the long one; cancel the long one from its page (in a second tab) and
    watch the waiting job go from queued to succeeded, with its image, on its own page."""
    job = stack.submit(key=user_key, model=MODEL, steps=20, seed=7)
    page.goto(f"{stack.url}/admin/jobs/{job['id']}")
    assert page.locator(".headstatus [data-role='status']").inner_text() == "queued"
    other = page.context.new_page()
    other.on("dialog", lambda dialog: dialog.accept())
    other.goto(f"{stack.url}/admin/jobs/{long_id}")
    other.click("button:has-text('Cancel')")
    assert stack.wait(long_id)["status"] == "canceled"
    other.locator(".headstatus [data-role='status']", has_text="canceled").wait_for()  # live, or reloaded
    other.close()
    page.locator(".thumb img").wait_for(timeout=60_000)  # the page reloads itself when the job ends
    assert page.locator(".headstatus [data-role='status']").inner_text() == "succeeded"
    page.wait_for_function("document.querySelector('.thumb img').naturalWidth === 32")
    assert page.locator(".timeline li").count() == 3
    shoot(page, "job")
    with page.expect_popup() as popup:
        page.click(".thumb")
    full = popup.value
    full.wait_for_load_state()
    assert full.evaluate("document.images[0].naturalWidth") == 32
    full.close()


def filter_jobs(page, stack) -> None:
    page.goto(f"{stack.url}/admin/jobs")
    page.select_option('select[name="status"]', "canceled")
    page.click("button:has-text('Apply')")
    page.wait_for_url(re.compile(r"status=canceled"))
    statuses = page.locator("tbody [data-role='status']").all_inner_texts()
    assert statuses and set(statuses) == {"canceled"}
    real = page.locator("tbody tr", has_text="owner-alice")
    assert real.count() == 2
    shoot(page, "jobs-filtered", full_page=False)


def open_a_worker(page, stack) -> None:
    page.click("nav >> text=Workers")
    row = page.locator("tbody tr").first
    assert "cpu" in row.inner_text() and "online" in row.inner_text()
    shoot(page, "workers")
    row.locator("a").first.click()
    page.wait_for_url(re.compile(r"/admin/workers/.+"))
    assert MODEL in page.locator("main").inner_text()
    shoot(page, "worker")


def create_and_revoke_a_key(page, stack) -> None:
    page.click("nav >> text=Keys")
    page.fill('#create-key input[name="name"]', "ci-bot")
    page.click("button:has-text('Create key')")
    secret = page.locator("#new-secret").inner_text().strip()
    me = requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert me.status_code == 200 and me.json()["role"] == "user"
    shoot(page, "keys-created")
    key_id = me.json()["key_id"]
    page.goto(f"{stack.url}/admin/keys")
    assert secret not in page.content()
    page.locator(f'tr[data-key="{key_id}"] button:has-text("Revoke")').click()
    assert page.locator(f'tr[data-key="{key_id}"] .badge', has_text="revoked").count() == 1
    shoot(page, "keys")
    gone = requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert gone.status_code == 401


def test_dashboard_in_a_real_browser(auth_stack, browser_page):
    stack, page = auth_stack, browser_page
    user_key = stack.create_key(role="user", name="alice", owner="owner-alice")["secret"]
    seed_jobs(stack.store, 400, time.time() - 24 * 3600, spacing_s=200, statuses=FINISHED)  # history
    sign_in(page, stack)
    long_id = cancel_a_queued_job(page, stack, user_key)
    watch_a_job_finish(page, stack, long_id, user_key)
    filter_jobs(page, stack)
    open_a_worker(page, stack)
    create_and_revoke_a_key(page, stack)
    page.click("nav >> text=Overview")
    assert page.locator(".tile").count() >= 9 and page.locator("svg.chart").count() == 2
    shoot(page, "overview")
    page.click("button:has-text('Sign out')")
    page.goto(f"{stack.url}/admin/keys")
    assert "/admin/login" in page.url
