"""Every URL the API returns is built from `KILN_PUBLIC_URL`, never from the request's Host.

A client controls the `Host` (and `X-Forwarded-*`) headers, so building absolute URLs from them
lets anyone make job, output and preview links (and webhook payloads cached from them) point
anywhere. This WSGI middleware overwrites the host, scheme and script root Flask sees with the
configured public address before routing, so `url_for(..., _external=True)` and `request.host_url`
can only produce it. The client's own Host stays in `environ["kiln.client_host"]` for logs.
"""

from __future__ import annotations

from urllib.parse import urlsplit


class PublicURL:
    def __init__(self, wsgi_app, public_url: str) -> None:
        parts = urlsplit(public_url)
        self.wsgi_app = wsgi_app
        self.scheme, self.host = parts.scheme, parts.netloc
        self.script_root = parts.path.rstrip("/")

    def __call__(self, environ: dict, start_response):
        environ["kiln.client_host"] = environ.get("HTTP_HOST", "")
        environ["HTTP_HOST"] = self.host
        environ["wsgi.url_scheme"] = self.scheme
        environ.pop("HTTP_X_FORWARDED_HOST", None)
        if self.script_root:
            environ["SCRIPT_NAME"] = self.script_root
        return self.wsgi_app(environ, start_response)
