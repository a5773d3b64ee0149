"""API keys (admin only): create, list, read, revoke. And `GET /v1/me` for any key."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from pydantic import ValidationError

from api.services import kiln
from api.auth import admin_required, principal
from api.schemas import KeyCreate, KeyCreated, KeyList, KeyView, Me, dump
from shared.errors import BadRequest, ValidationFailed

bp = Blueprint("keys", __name__, url_prefix="/v1")


@bp.post("/keys")
@admin_required
def create_key():
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("the request body must be a JSON object", field="body", code="invalid_json")
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object", field="body")
    try:
        spec = KeyCreate(**body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise ValidationFailed(f"{field}: {err['msg'][:1].lower()}{err['msg'][1:]}", field=field) from None
    created = kiln().keys.create(role=spec.role, name=spec.name, owner=spec.owner)
    return jsonify(dump(KeyCreated, {**created.key, "secret": created.secret})), 201


@bp.get("/keys")
@admin_required
def list_keys():
    return jsonify(dump(KeyList, {"keys": kiln().keys.list()}))


@bp.get("/keys/<key_id>")
@admin_required
def get_key(key_id: str):
    return jsonify(dump(KeyView, kiln().keys.get(key_id)))


@bp.delete("/keys/<key_id>")
@admin_required
def revoke_key(key_id: str):
    return jsonify(dump(KeyView, kiln().keys.revoke(key_id)))


@bp.get("/me")
def me():
    who = principal()
    return jsonify(dump(Me, {"key_id": who.key_id, "owner": who.owner, "role": who.role,
                             "webhook_secret": kiln().keys.webhook_secret(who.key_id)}))
