"""Bad input: every kind of invalid field is a 4xx JSON error naming the field; nothing stored."""

from __future__ import annotations

import pytest

GOOD = {"model": "kiln-ddpm-tiny", "steps": 10, "seed": 1}


def test_good_request_is_accepted_with_location(client, redis_keys):
    response = client.post("/v1/jobs", json=GOOD)
    assert response.status_code == 202, response.json
    body = response.json
    assert body["status"] == "queued"
    assert response.headers["Location"].endswith(f"/v1/jobs/{body['id']}")
    assert body["params"]["steps"] == 10 and body["params"]["width"] == 32
    assert f"kiln:job:{body['id']}" in redis_keys()


@pytest.mark.parametrize(
    "change, field, status, words",
    [
        ({"steps": -1}, "steps", 422, ">= 1"),
        ({"steps": 0}, "steps", 422, ">= 1"),
        ({"steps": 151}, "steps", 422, "<= 150"),
        ({"width": 36}, "width", 422, "multiple of 8"),
        ({"width": 4096}, "width", 422, "<= 2048"),
        ({"width": 64}, "width", 422, "must be 32"),
        ({"scheduler": "warp_drive"}, "scheduler", 422, "allowed"),
        ({"model": "nope"}, "model", 422, "available"),
        ({"steps": "10"}, "steps", 422, "integer"),
        ({"steps": 10.5}, "steps", 422, "integer"),
        ({"seed": True}, "seed", 422, "integer"),
        ({"guidance_scale": "high"}, "guidance_scale", 422, "number"),
        ({"num_images": 9}, "num_images", 422, "<= 8"),
        ({"num_images": 0}, "num_images", 422, ">= 1"),
        ({"seed": -5}, "seed", 422, ">= 0"),
        ({"colour": "red"}, "colour", 422, "unknown field"),
        ({"output_format": "gif"}, "output_format", 422, "png"),
        ({"task": "text-to-image"}, "task", 422, "does not do"),
        ({"task": "dream"}, "task", 422, "unconditional"),
        ({"prompt": "a cat"}, "prompt", 422, "not used"),
        ({"strength": 0.5}, "strength", 422, "only used"),
    ],
)
def test_invalid_field(client, redis_keys, change, field, status, words):
    before = redis_keys()
    response = client.post("/v1/jobs", json={**GOOD, **change})
    assert response.status_code == status, response.json
    error = response.json["error"]
    assert error["field"] == field
    assert words in error["message"], error["message"]
    assert redis_keys() == before


@pytest.mark.parametrize("data, content_type", [
    ("not json", "application/json"),
    ("{\"model\": ", "application/json"),
    ("model=x", "application/x-www-form-urlencoded"),
])
def test_body_not_json(client, redis_keys, data, content_type):
    before = redis_keys()
    response = client.post("/v1/jobs", data=data, content_type=content_type)
    assert response.status_code == 400
    assert response.json["error"]["field"] == "body"
    assert redis_keys() == before


@pytest.mark.parametrize("body", [[1, 2], "text", 3])
def test_body_not_an_object(client, redis_keys, body):
    before = redis_keys()
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.json["error"]["field"] == "body"
    assert redis_keys() == before


def test_missing_prompt_where_needed(redis_url, tmp_path, redis_keys):
    """A text-to-image model needs a prompt."""
    import json

    from api.app import create_app
    from shared.settings import load_settings

    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": [
        {"name": "sd-tiny", "source": str(tmp_path), "family": "sd", "default_width": 64, "default_height": 64}
    ]}))
    app = create_app(load_settings(redis_url=redis_url, models_file=catalog, storage_root=tmp_path / "o",
                                   auth="disabled"))
    before = redis_keys()
    response = app.test_client().post("/v1/jobs", json={"model": "sd-tiny"})
    assert response.status_code == 422
    assert response.json["error"]["field"] == "prompt"
    response = app.test_client().post("/v1/jobs", json={"model": "sd-tiny", "prompt": ""})
    assert response.status_code == 422 and response.json["error"]["field"] == "prompt"
    assert redis_keys() == before


def test_unknown_job_and_route_are_json_404(client):
    for path in ("/v1/jobs/job_000000000000aaaaaaaaaaaaaaaa", "/v1/jobs/../etc", "/v1/nothing"):
        response = client.get(path)
        assert response.status_code == 404
        assert "error" in response.json


def test_wrong_method_is_json_405(client):
    response = client.delete("/v1/jobs")
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
