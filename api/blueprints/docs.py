"""The API's own documentation: `/v1/openapi.json` and `/docs`, a page rendered on the server
from the same document (no JavaScript, no CDN)."""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, render_template

from api.openapi import document

bp = Blueprint("docs", __name__, template_folder="../templates")


@bp.get("/v1/openapi.json")
def openapi():
    return jsonify(document())


@bp.get("/docs")
def page():
    doc = document()
    operations = [
        {"method": method.upper(), "path": path, **op,
         "body": json.dumps(op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))}
        for path, methods in doc["paths"].items() for method, op in methods.items()
    ]
    schemas = {name: json.dumps(schema, indent=2) for name, schema in doc["components"]["schemas"].items()}
    return render_template("docs.html", info=doc["info"], operations=operations, schemas=schemas)
