"""Serving stored objects (outputs, previews) to clients: one path for the API and the dashboard."""

from __future__ import annotations

from flask import Response, redirect

from api.services import kiln
from shared.errors import NotFound
from shared.storage import ObjectNotFound


def serve_stored(key: str, content_type: str, what: str, cache_control: str):
    """A redirect to a presigned URL (S3), or the object's bytes (local folder); 404 if gone."""
    services = kiln()
    url = services.storage.url(key, services.settings.output_url_ttl_s)
    if url:
        return redirect(url, code=302)
    try:
        data = services.storage.get(key)
    except ObjectNotFound:
        raise NotFound(f"{what} is no longer stored") from None
    return Response(data, mimetype=content_type, headers={"Cache-Control": cache_control})
