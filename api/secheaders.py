"""Security headers on every response: no MIME sniffing, no framing, no referrer leaks, and a
Content Security Policy — strict for JSON, same-origin only for the dashboard and the docs page.

The dashboard loads only its own script and stylesheet (`/admin/static`); the inline `style=`
attributes of its progress bars need `style-src 'unsafe-inline'` (styles cannot run code).
"""

from __future__ import annotations

from flask import Flask, Response, request

COMMON = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def install_security_headers(app: Flask) -> None:
    @app.after_request
    def _secure(response: Response) -> Response:
        for name, value in COMMON.items():
            response.headers.setdefault(name, value)
        page = response.mimetype == "text/html" or request.path.startswith("/admin")
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP if page else API_CSP)
        if request.path.startswith("/admin"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
