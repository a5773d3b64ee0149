"""API keys: create (the secret is shown once, on the next page only), list with usage, revoke."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from api.admin.session import page
from api.services import kiln
from shared.errors import KilnError


@page("/keys")
def keys():
    return _render()


def _render(created: dict | None = None, status: int = 200):
    listed = sorted(kiln().keys.list(), key=lambda k: -(k["created_at"] or 0))
    return render_template("admin/keys.html", keys=listed, created=created), status


@page("/keys", methods=("POST",))
def keys_create():
    role = request.form.get("role", "user")
    try:
        made = kiln().keys.create(role=role, name=request.form.get("name", "").strip(),
                                  owner=request.form.get("owner", "").strip() or None)
    except KilnError as exc:
        flash(f"Could not create the key: {exc.message}", "error")
        return redirect(url_for("admin.keys"))
    # Shown once, in this response only: never stored anywhere but as its hash.
    return _render({"id": made.key["id"], "secret": made.secret, "role": made.key["role"]}, 201)


@page("/keys/<key_id>/revoke", methods=("POST",))
def key_revoke(key_id: str):
    try:
        kiln().keys.revoke(key_id)
    except KilnError as exc:
        flash(exc.message, "error")
    else:
        flash(f"Key {key_id} revoked.")
    return redirect(url_for("admin.keys"))
