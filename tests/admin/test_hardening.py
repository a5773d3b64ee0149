"""Issue 15.6 for the dashboard: signing out ends the session on the server (a copied cookie is
worthless afterwards), pages carry anti-framing / CSP / nosniff headers, and the key form checks
the owner with the same rule as the API."""

from __future__ import annotations

from tests.admin.conftest import Browser


def test_logout_ends_the_session_on_the_server(app, services):
    browser = Browser(app)
    assert browser.sign_in(services.keys.create(role="admin").secret).status_code == 302
    stolen = browser.client.get_cookie("kiln_admin").value  # what an attacker copied earlier
    assert browser.post("/admin/logout").status_code == 302
    replay = app.test_client()
    replay.set_cookie("kiln_admin", stolen)
    response = replay.get("/admin/keys")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_a_session_ends_when_its_record_is_gone(app, services, admin):
    assert admin.get("/admin/keys").status_code == 200
    prefix = services.settings.key_prefix
    for key in services.store.redis.scan_iter(f"{prefix}:admin:session:*"):
        services.store.redis.delete(key)  # e.g. signed out in another tab
    assert admin.get("/admin/keys").status_code == 302


def test_dashboard_pages_send_security_headers(app, admin):
    for response in (app.test_client().get("/admin/login"), admin.get("/admin/keys")):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp


def test_key_form_checks_the_owner_like_the_api(admin, services):
    before = len(services.keys.list())
    for owner in ("has space", "x" * 65, "semi;colon", "new\nline"):
        response = admin.post("/admin/keys", {"role": "user", "owner": owner, "name": "n"})
        assert response.status_code == 302  # back to the list with the message flashed
        page = admin.get("/admin/keys").get_data(as_text=True)
        assert "owner must be 1-64 letters" in page
    assert len(services.keys.list()) == before
    assert admin.post("/admin/keys", {"role": "user", "owner": "team-a.1", "name": "n"}).status_code == 201
