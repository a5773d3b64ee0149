"""What clients can ask for: models and schedulers."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.services import kiln
from api.schemas import LoraList, ModelList, ModelView, SchedulerList, dump
from shared.schedulers import SCHEDULERS

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models():
    return jsonify(dump(ModelList, {"models": [spec.public() for spec in kiln().catalog],
                                    "schedulers": list(SCHEDULERS)}))


@bp.get("/models/<name>")
def get_model(name: str):
    return jsonify(dump(ModelView, kiln().catalog.get(name).public()))


@bp.get("/loras")
def list_loras():
    """LoRA adapters jobs may name in `loras`, with the model or family each is for."""
    return jsonify(dump(LoraList, {"loras": [lora.public() for lora in kiln().catalog.loras]}))


@bp.get("/schedulers")
def list_schedulers():
    return jsonify(dump(SchedulerList, {
        "schedulers": [
            {"name": name, "class": choice.class_name, "description": choice.description}
            for name, choice in SCHEDULERS.items()
        ]
    }))
