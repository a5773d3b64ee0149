from __future__ import annotations

import subprocess
import sys

from shared.settings import REPO_ROOT


def test_api_never_imports_torch():
    code = (
        "import sys\n"
        "from api.app import create_app\n"
        "from shared.settings import load_settings\n"
        "create_app(load_settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "import api.blueprints.jobs, api.blueprints.models, api.blueprints.health\n"
        "assert 'torch' not in sys.modules, 'the API imported torch'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_models_lists_the_bundled_model_and_schedulers(client):
    body = client.get("/v1/models").json
    names = [m["name"] for m in body["models"]]
    assert names == ["kiln-shapes", "kiln-shapes-flux", "kiln-ddpm-tiny"]  # the default first
    shapes = body["models"][0]
    assert shapes["tasks"] == ["text-to-image", "image-to-image", "inpaint"] and "circle" in shapes["vocabulary"]
    assert shapes["defaults"] == {"width": 64, "height": 64, "steps": 20, "scheduler": "dpmpp_2m",
                                  "guidance_scale": 4.0}
    flux = body["models"][1]
    assert flux["family"] == "flux" and flux["defaults"]["steps"] == 8 and flux["defaults"]["max_sequence_length"] == 32
    model = body["models"][2]
    assert model["tasks"] == ["unconditional"]
    assert model["defaults"]["width"] == 32
    assert "dpmpp_2m_karras" in body["schedulers"]
    assert "source" not in model  # no filesystem paths leak


def test_a_request_without_a_model_gets_the_default_one(client):
    job = client.post("/v1/jobs", json={"prompt": "a small red circle at the top left on a white background"}).json
    assert job["params"]["model"] == "kiln-shapes" and job["params"]["width"] == 64
    missing = client.post("/v1/jobs", json={"seed": 1})
    assert missing.status_code == 422 and missing.json["error"]["field"] == "prompt"


def test_healthz_checks_redis_and_storage(client):
    body = client.get("/healthz").json
    assert body == {"status": "ok", "checks": {"redis": "ok", "storage": "ok"}}


def test_healthz_reports_redis_down(tmp_path):
    from api.app import create_app
    from shared.settings import load_settings

    app = create_app(load_settings(redis_url="redis://127.0.0.1:1/0", storage_root=tmp_path))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"].startswith("error")
