"""The API wires metrics and request ids in: /metrics is public, every response
carries a request id, and the job record keeps the one it was submitted with."""

from __future__ import annotations

from api.app import create_app
from shared.jobs.store import JobStore
from shared.settings import load_settings

GOOD = {"model": "kiln-ddpm-tiny", "steps": 2, "seed": 1}


def make_client(redis_url, tmp_path, auth: str):
    settings = load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "outputs",
                             models_dir=tmp_path / "models", auth=auth)
    return create_app(settings).test_client()


def test_metrics_is_public(redis_url, tmp_path):
    """Prometheus scrapes without a key; the Ingress does not route /metrics to the outside."""
    client = make_client(redis_url, tmp_path, "enabled")
    assert client.get("/v1/jobs").status_code == 401
    response = client.get("/metrics")
    assert response.status_code == 200 and b"kiln_redis_up 1.0" in response.data


def test_refused_requests_get_a_request_id_too(redis_url, tmp_path):
    client = make_client(redis_url, tmp_path, "enabled")
    response = client.get("/v1/jobs", headers={"X-Request-ID": "abc-1"})
    assert response.status_code == 401 and response.headers["X-Request-ID"] == "abc-1"


def test_the_job_record_keeps_its_request_id(redis_url, tmp_path):
    client = make_client(redis_url, tmp_path, "disabled")
    response = client.post("/v1/jobs", json=GOOD, headers={"X-Request-ID": "submit-42"})
    assert response.status_code == 202 and response.headers["X-Request-ID"] == "submit-42"
    assert JobStore.from_url(redis_url).get(response.json["id"]).request_id == "submit-42"
    generated = client.post("/v1/jobs", json=GOOD)
    assert JobStore.from_url(redis_url).get(generated.json["id"]).request_id == generated.headers["X-Request-ID"]
