"""Per-model limits at the API: sizes, pixels and the per-job compute budget; image jobs sized
from (or resizing) their input; FLUX/SD3 family fields and flow schedulers; all 422 naming the
field, nothing stored."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from api.app import create_app
from shared.settings import load_settings
from tests.api.test_inputs import bomb

MODELS = [
    {"name": "shapes", "source": "/nowhere", "family": "sd", "default_width": 64, "default_height": 64,
     "default_steps": 20},
    {"name": "sd-capped", "source": "/nowhere", "family": "sd", "default_width": 64, "default_height": 64,
     "max_width": 96, "max_height": 80, "max_cost": 64 * 64 * 30},
    {"name": "flux-dev", "source": "/nowhere", "family": "flux", "guidance_distilled": True,
     "default_width": 32, "default_height": 32, "default_max_sequence_length": 128},
    {"name": "flux-schnell", "source": "/nowhere", "family": "flux", "default_width": 32, "default_height": 32},
    {"name": "sd3", "source": "/nowhere", "family": "sd3", "default_width": 32, "default_height": 32},
]


@pytest.fixture
def app(redis_url, tmp_path):
    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": MODELS}))
    return create_app(load_settings(redis_url=redis_url, models_file=catalog, auth="disabled",
                                    storage_root=tmp_path / "store"))


@pytest.fixture
def client(app):
    return app.test_client()


def refused(client, body: dict, field: str, *words: str) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["field"] == field, error
    for word in words:
        assert word in error["message"], error
    return error["message"]


def png_b64(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_the_706_second_request_is_refused(client, redis_keys):
    before = redis_keys()
    refused(client, {"model": "shapes", "prompt": "a red circle", "width": 1024, "height": 1024, "steps": 1},
            "width", "at most 128")
    assert redis_keys() == before


def test_declared_limits_name_the_field_and_the_limit(client):
    refused(client, {"model": "sd-capped", "prompt": "x", "height": 88}, "height", "at most 80")
    refused(client, {"model": "sd-capped", "prompt": "x", "steps": 31}, "steps", "max_cost = 122880")
    refused(client, {"model": "sd-capped", "prompt": "x", "steps": 16, "num_images": 2}, "steps", "max_cost")
    assert client.post("/v1/jobs", json={"model": "sd-capped", "prompt": "x", "steps": 30}).status_code == 202


def test_models_list_their_limits_and_fields(client):
    models = {m["name"]: m for m in client.get("/v1/models").json["models"]}
    assert models["shapes"]["limits"] == {"max_width": 128, "max_height": 128, "max_pixels": 128 * 128,
                                          "max_cost": 64 * 64 * 64 * 20}
    flux = models["flux-dev"]
    assert flux["fields"] == ["max_sequence_length", "true_cfg_scale"] and flux["guidance_distilled"]
    assert flux["defaults"]["scheduler"] == "flow_euler" and flux["defaults"]["max_sequence_length"] == 128
    assert "dpmpp_2m" not in flux["schedulers"] and "flow_euler" not in models["shapes"]["schedulers"]
    assert models["sd3"]["fields"] == ["max_sequence_length"] and models["sd3"]["size_multiple"] == 16


def test_image_jobs_resize_their_input_to_the_job_size(app):
    body = {"model": "shapes", "task": "image-to-image", "prompt": "x", "image": png_b64(128, 128),
            "width": 64, "height": 64}
    response = app.test_client().post("/v1/jobs", json=body)
    assert response.status_code == 202, response.json
    job = app.extensions["kiln"].store.get(response.json["id"])
    assert (job.params["width"], job.params["height"]) == (64, 64)
    stored = Image.open(io.BytesIO(app.extensions["kiln"].storage.get(job.params["image_key"])))
    assert stored.size == (64, 64)


def test_image_jobs_without_a_size_take_the_inputs(app):
    body = {"model": "shapes", "task": "image-to-image", "prompt": "x", "image": png_b64(100, 75)}
    response = app.test_client().post("/v1/jobs", json=body)
    assert response.status_code == 202, response.json
    assert (response.json["params"]["width"], response.json["params"]["height"]) == (96, 72)
    job = app.extensions["kiln"].store.get(response.json["id"])
    assert Image.open(io.BytesIO(app.extensions["kiln"].storage.get(job.params["image_key"]))).size == (96, 72)
    half = app.test_client().post("/v1/jobs", json={**body, "height": 48}).json  # the input's aspect
    assert (half["params"]["width"], half["params"]["height"]) == (64, 48)


def test_a_big_input_without_a_size_is_over_the_models_limit(client, redis_keys):
    before = redis_keys()
    refused(client, {"model": "shapes", "task": "image-to-image", "prompt": "x", "image": png_b64(4096, 4096)},
            "width", "at most 128")
    assert redis_keys() == before


def test_huge_dimensions_are_refused_from_the_header(client):
    started = time.monotonic()
    body = {"model": "shapes", "task": "image-to-image", "prompt": "x", "image": base64.b64encode(bomb()).decode()}
    refused(client, body, "image", "pixels")
    assert time.monotonic() - started < 2  # not decoded


@pytest.mark.parametrize("body, field, words", [
    ({"model": "shapes", "true_cfg_scale": 2.0}, "true_cfg_scale", ("sd models",)),
    ({"model": "shapes", "max_sequence_length": 77}, "max_sequence_length", ("leave it out",)),
    ({"model": "sd3", "true_cfg_scale": 2.0}, "true_cfg_scale", ("sd3 models",)),
    ({"model": "flux-dev", "max_sequence_length": 513}, "max_sequence_length", ("<= 512",)),
    ({"model": "flux-dev", "true_cfg_scale": 0.5}, "true_cfg_scale", (">= 1",)),
    ({"model": "flux-schnell", "guidance_scale": 3.5}, "guidance_scale", ("not guidance-distilled",)),
    ({"model": "flux-dev", "scheduler": "dpmpp_2m"}, "scheduler", ("flow_euler",)),
    ({"model": "shapes", "scheduler": "flow_euler"}, "scheduler", ("does not suit",)),
    ({"model": "flux-dev", "width": 40}, "width", ("multiple of 16",)),
    ({"model": "sd3", "task": "inpaint"}, "task", ("image-to-image",)),
])
def test_family_fields_and_schedulers(client, body, field, words):
    refused(client, {"prompt": "a cat", **body}, field, *words)


def test_family_fields_are_stored_with_defaults(client):
    flux = client.post("/v1/jobs", json={"model": "flux-dev", "prompt": "a cat", "true_cfg_scale": 2.0,
                                         "negative_prompt": "ugly"}).json["params"]
    assert (flux["true_cfg_scale"], flux["max_sequence_length"], flux["scheduler"]) == (2.0, 128, "flow_euler")
    assert flux["guidance_scale"] == 3.5
    sd3 = client.post("/v1/jobs", json={"model": "sd3", "prompt": "a cat", "max_sequence_length": 77}).json["params"]
    assert sd3["max_sequence_length"] == 77 and "true_cfg_scale" not in sd3
    sd = client.post("/v1/jobs", json={"model": "shapes", "prompt": "a cat"}).json["params"]
    assert "max_sequence_length" not in sd and "true_cfg_scale" not in sd


def test_openapi_documents_the_family_fields(client):
    schema = client.get("/v1/openapi.json").json["components"]["schemas"]["JobRequest"]["properties"]
    assert "FLUX only" in schema["true_cfg_scale"]["description"]
    assert schema["max_sequence_length"]["anyOf"][0]["maximum"] == 512


def test_one_model_view_is_typed_and_documented(client):
    flux = client.get("/v1/models/flux-dev").json
    assert flux["limits"]["max_cost"] == 64 * 32 * 32 * 28 and flux["size_multiple"] == 16
    view = client.get("/v1/openapi.json").json["components"]["schemas"]["ModelView"]
    assert {"limits", "fields", "schedulers", "defaults"} <= set(view["required"])
