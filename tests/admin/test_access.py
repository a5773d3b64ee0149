"""Access control on every dashboard page and action: anonymous visitors are sent to sign in,
user keys are refused, admin keys get in; every POST needs the session's CSRF token."""

from __future__ import annotations

import pytest

from api.app import create_app
from shared.settings import load_settings
from tests.admin.conftest import Browser, csrf_of

JOB = "job_0000000000000000000000000000"
PAGES = ["/admin/", "/admin/jobs", "/admin/jobs/live", "/admin/workers", "/admin/keys"]
ACTIONS = ["/admin/jobs/cancel", "/admin/keys", "/admin/logout"]


def make_job(services, owner="alice", prompt="a red fox"):
    from shared.ids import new_job_id
    params = {"model": "kiln-ddpm-tiny", "task": "unconditional", "prompt": prompt, "steps": 2,
              "width": 32, "height": 32, "num_images": 1, "seed": 1}
    return services.store.create(new_job_id(), owner, params, "kiln.default")


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_sent_to_sign_in(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


@pytest.mark.parametrize("path", ACTIONS)
def test_anonymous_actions_are_sent_to_sign_in_and_change_nothing(app, services, path):
    before = len(services.keys.list())
    response = app.test_client().post(path, data={"name": "x"})
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert len(services.keys.list()) == before


def test_a_user_key_cannot_sign_in(app, services):
    browser = Browser(app)
    response = browser.sign_in(services.keys.create(role="user").secret)
    assert response.status_code == 403
    assert "not an admin key" in response.get_data(as_text=True)
    assert browser.get("/admin/jobs").status_code == 302


def test_an_unknown_key_cannot_sign_in(app):
    assert Browser(app).sign_in("kiln_key_nope_secret").status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_user_bearer_key_is_refused_and_admin_bearer_key_gets_in(app, services, path):
    user = {"Authorization": f"Bearer {services.keys.create(role='user').secret}"}
    boss = {"Authorization": f"Bearer {services.keys.create(role='admin').secret}"}
    client = app.test_client()
    assert client.get(path, headers=user).status_code == 403
    assert client.get(path, headers=boss).status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_admin_session_sees_every_page(admin, path):
    assert admin.get(path).status_code == 200


def test_job_and_worker_pages(admin, services):
    job = make_job(services)
    assert admin.get(f"/admin/jobs/{job.id}").status_code == 200
    assert admin.get(f"/admin/jobs/{JOB}").status_code == 404
    assert admin.get("/admin/workers/nobody").status_code == 404
    assert admin.get(f"/admin/jobs/{job.id}/outputs/0").status_code == 404


def test_user_bearer_key_cannot_act(app, services):
    job = make_job(services)
    user = {"Authorization": f"Bearer {services.keys.create(role='user', owner='alice').secret}"}
    client = app.test_client()
    assert client.post(f"/admin/jobs/{job.id}/cancel", headers=user).status_code == 403
    assert client.post("/admin/keys", data={"role": "admin"}, headers=user).status_code == 403
    assert services.store.get(job.id).status.value == "queued"
    assert all(k["role"] == "user" for k in services.keys.list())


@pytest.mark.parametrize("path", ["/admin/jobs/cancel", "/admin/keys", "/admin/logout"])
def test_posts_without_or_with_a_wrong_csrf_token_are_refused(admin, services, path):
    job = make_job(services)
    keys_before = len(services.keys.list())
    for data in ({"job_id": job.id}, {"job_id": job.id, "csrf_token": "forged"}):
        response = admin.client.post(path, data=data)
        assert response.status_code == 400
        assert "CSRF" in response.get_data(as_text=True)
    assert services.store.get(job.id).status.value == "queued"
    assert len(services.keys.list()) == keys_before
    assert admin.get("/admin/jobs").status_code == 200  # still signed in


def test_sign_in_itself_needs_the_csrf_token(app, services):
    secret = services.keys.create(role="admin").secret
    response = app.test_client().post("/admin/login", data={"key": secret})
    assert response.status_code == 400


def test_job_actions_need_csrf(admin, services):
    job = make_job(services)
    assert admin.post(f"/admin/jobs/{job.id}/cancel", csrf=False).status_code == 400
    assert admin.post(f"/admin/jobs/{job.id}/retry", csrf=False).status_code == 400
    assert services.store.count() == 1


def test_logout_ends_the_session(admin):
    assert admin.post("/admin/logout").status_code == 302
    assert admin.get("/admin/jobs").status_code == 302


def test_revoking_the_signed_in_key_signs_out(app, services):
    browser = Browser(app)
    made = services.keys.create(role="admin")
    browser.sign_in(made.secret)
    assert browser.get("/admin/keys").status_code == 200
    services.keys.revoke(made.key["id"])
    assert browser.get("/admin/keys").status_code == 302


def test_sign_in_redirects_only_inside_the_dashboard(app, services):
    secret = services.keys.create(role="admin").secret
    for target, expected in (("/admin/workers", "/admin/workers"), ("https://evil.example/", "/admin/"),
                             ("//evil.example", "/admin/")):
        browser = Browser(app)
        browser.csrf = csrf_of(browser.get("/admin/login").get_data(as_text=True))
        response = browser.client.post("/admin/login", data={"key": secret, "csrf_token": browser.csrf,
                                                             "next": target})
        assert response.headers["Location"] == expected


def test_api_bearer_check_still_guards_the_api(app):
    assert app.test_client().get("/v1/jobs").status_code == 401


def test_local_mode_opens_without_sign_in_and_says_so(redis_url, tmp_path):
    app = create_app(load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path,
                                   models_dir=tmp_path / "models", auth="disabled"))
    client = app.test_client()
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "KILN_AUTH=disabled" in page.get_data(as_text=True)
    assert client.post("/admin/jobs/cancel", data={}).status_code == 400  # CSRF still checked
