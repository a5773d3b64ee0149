"""Who is calling: every request but the public ones carries `Authorization: Bearer <key>`.

The principal is set on `flask.g` before each request; handlers read it with `principal()` and
guard admin-only routes with `@admin_required`. With `KILN_AUTH=disabled` (the local single-user
stack) every request acts as the local admin.
"""

from __future__ import annotations

import functools
import logging

from flask import Flask, g, request

from api.services import kiln
from shared.auth import LOCAL_PRINCIPAL, Principal
from shared.errors import Forbidden, Unauthorized

logger = logging.getLogger(__name__)

# Endpoints anyone may call: probes, Prometheus scrapes (kept inside the cluster by the ingress)
# and the API's own documentation. The admin dashboard adds its pages at registration: it
# authenticates them itself (session cookie or bearer), see `api.admin.session`.
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.livez", "metrics.metrics", "docs.openapi", "docs.page",
                              "static"})


def principal() -> Principal:
    return g.principal


def admin_required(view):
    """Refuse the view to non-admin keys (403: they are known, just not allowed)."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not principal().is_admin:
            raise Forbidden("this endpoint needs an admin key", code="admin_required")
        return view(*args, **kwargs)
    return wrapped


def install_auth(app: Flask) -> None:
    disabled = kiln().settings.auth == "disabled"
    if disabled:
        banner = "!" * 72
        logger.warning("%s\nKILN_AUTH=disabled: NO AUTHENTICATION. Every request acts as the local admin.\n"
                       "Use this only for a single-user local stack, never on a network.\n%s", banner, banner)

    @app.before_request
    def _authenticate():
        if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
            return
        if disabled:
            g.principal = LOCAL_PRINCIPAL
            return
        g.principal = _from_header(request.headers.get("Authorization", ""))


def _from_header(header: str) -> Principal:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_key")
    found = kiln().keys.verify(token.strip())
    if found is None:
        raise Unauthorized("invalid or revoked API key", code="invalid_key")
    return found
