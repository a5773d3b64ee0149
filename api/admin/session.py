"""Who may use the dashboard: sign-in with an admin key, a signed session cookie, CSRF tokens.

- Signing in verifies the key once and opens a server-side session: a random id in Flask's
  signed cookie naming `<prefix>:admin:session:<id>` in Redis, which holds the key id for at
  most `SESSION_TTL_S`. Every later request re-reads both, so signing out (which deletes the
  record) ends the session everywhere — a copied cookie is worthless afterwards — and a revoked
  or demoted key is signed out at once.
- Every POST carries the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`),
  compared in constant time.
- A request may instead send `Authorization: Bearer <admin key>` (scripts, curl); it needs no CSRF
  token because browsers never attach that header on their own.
- With `KILN_AUTH=disabled` (the local single-user stack) the dashboard opens without sign-in and
  says so in a banner; CSRF tokens are still checked.

The session is signed with `KILN_SECRET_KEY` when set, else with a random secret generated once
and kept in Redis (`<prefix>:admin:secret_key`), so every API process and restart shares it.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import logging
import secrets

import redis
from flask import Blueprint, Flask, abort, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

import api.auth
from api.services import EXTENSION, kiln
from shared.auth import LOCAL_PRINCIPAL, Principal
from shared.errors import KilnError, NotFound

logger = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
ENDPOINTS: set[str] = {"admin.static"}  # every dashboard endpoint, filled by `page`
SESSION_TTL_S = 12 * 3600


@bp.record_once
def _setup(state) -> None:
    app: Flask = state.app
    # The dashboard authenticates itself (cookie or bearer, below): the API's header check skips it.
    api.auth.PUBLIC_ENDPOINTS = api.auth.PUBLIC_ENDPOINTS | frozenset(ENDPOINTS)
    app.config["SESSION_COOKIE_NAME"] = "kiln_admin"
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"
    app.config["SESSION_COOKIE_SECURE"] = app.extensions[EXTENSION].settings.public_url.startswith("https://")
    if not app.secret_key:
        app.secret_key = _secret_key(app)


def _secret_key(app: Flask) -> str:
    services = app.extensions[EXTENSION]
    if services.settings.secret_key:
        return services.settings.secret_key
    try:
        client = services.store.redis
        key = services.store.names.admin_secret
        client.set(key, secrets.token_hex(32), nx=True)
        return client.get(key)
    except redis.RedisError as exc:  # Redis down at start: sessions then last until this process exits
        logger.warning("KILN_SECRET_KEY is unset and Redis is unreachable (%s): using a random "
                       "per-process secret; dashboard sessions will not survive a restart", exc)
        return secrets.token_hex(32)


def page(rule: str, methods: tuple[str, ...] = ("GET",), signed_in: bool = True):
    """Declare a dashboard view: routed on `bp`, exempt from the API's header check, and (unless
    `signed_in=False`) refused to anyone but an admin, with the CSRF token checked on POST."""
    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            if signed_in:
                g.principal = current_admin()
                if g.principal is None:
                    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
            if request.method == "POST" and not g.get("bearer"):
                check_csrf()
            return view(*args, **kwargs)

        ENDPOINTS.add(f"admin.{view.__name__}")
        return bp.route(rule, methods=list(methods))(guarded)
    return decorate


def auth_disabled() -> bool:
    return kiln().settings.auth == "disabled"


def current_admin() -> Principal | None:
    """The admin this request acts as; None (sign in) when anonymous; 403 for a non-admin key."""
    if auth_disabled():
        return LOCAL_PRINCIPAL
    keys = kiln().keys
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        g.bearer = True
        return _admin_or_403(keys.verify(token.strip()))
    key_id = _session_key_id()
    if not key_id:
        if "sid" in session:  # signed out elsewhere or expired: drop the stale cookie
            session.clear()
        return None
    try:
        key = keys.get(key_id)
    except NotFound:
        key = None
    if key is None or key["revoked_at"] or key["role"] != "admin":
        _end_session()
        return None
    return Principal(key_id=key_id, owner=key["owner"], role="admin")


def _session_record(sid: str) -> str:
    return kiln().store.names.admin_session(sid)


def _session_key_id() -> str | None:
    """The key id of this browser's server-side session (None: none, or it was ended)."""
    sid = session.get("sid")
    if not sid or not isinstance(sid, str):
        return None
    return kiln().store.redis.get(_session_record(sid))


def _open_session(key_id: str) -> None:
    sid = secrets.token_urlsafe(32)
    kiln().store.redis.set(_session_record(sid), key_id, ex=SESSION_TTL_S)
    session.clear()
    session["sid"] = sid


def _end_session() -> None:
    if sid := session.get("sid"):
        kiln().store.redis.delete(_session_record(str(sid)))
    session.clear()


def _admin_or_403(found: Principal | None) -> Principal:
    if found is None:
        abort(401, "invalid or revoked API key")
    if not found.is_admin:
        abort(403, "the dashboard needs an admin key")
    return found


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form's CSRF token is missing or stale; reload the page and try again")


@bp.app_template_global()
def admin_csrf_token() -> str:
    return csrf_token()


@bp.context_processor
def _page_context() -> dict:
    return {"auth_disabled": auth_disabled(), "who": g.get("principal"), "csrf_token": csrf_token}


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never an open redirect."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("admin.overview")


@page("/login", methods=("GET", "POST"), signed_in=False)
def login():
    if auth_disabled():
        return redirect(url_for("admin.overview"))
    if request.method == "GET":
        return render_template("admin/login.html", next=request.args.get("next", ""))
    found = kiln().keys.verify(request.form.get("key", "").strip())
    if found is None or not found.is_admin:
        message = "That key is unknown or revoked." if found is None else \
            "That key is not an admin key: the dashboard is for admins only."
        return render_template("admin/login.html", error=message, next=request.form.get("next", "")), \
            401 if found is None else 403
    _open_session(found.key_id)
    session.permanent = False
    csrf_token()
    logger.info("dashboard sign-in by key %s", found.key_id)
    return redirect(_safe_next(request.form.get("next")))


@page("/logout", methods=("POST",))
def logout():
    _end_session()
    return redirect(url_for("admin.login"))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    """Dashboard errors as pages (scripts asking for JSON get the API's JSON error)."""
    if request.accept_mimetypes.best == "application/json" or g.get("bearer"):
        from api.errors import error_response
        return error_response((exc.name or "error").lower().replace(" ", "_"), exc.description, exc.code)
    return render_template("admin/error.html", error=exc), exc.code


@bp.errorhandler(KilnError)
def _kiln_error(exc: KilnError):
    """A refused action (a quota, a vanished model) as a page naming what was wrong."""
    shown = {"code": exc.http_status, "name": "Refused", "description": exc.message}
    return render_template("admin/error.html", error=shown), exc.http_status



@bp.app_template_filter("admin_time")
def _time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_filter("admin_iso")
def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


@bp.app_template_filter("admin_duration")
def _duration(seconds: float) -> str:
    """1.23 s, 45 ms, 3 m 05 s, 2 h 10 m — short and readable."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} m"
