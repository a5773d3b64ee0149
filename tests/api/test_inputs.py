"""Input images: upload, base64 and URL; SSRF refusals; size and pixel caps before decoding."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from api.app import create_app
from shared import safehttp
from shared.errors import InputRefused
from shared.settings import load_settings

I2I = {"model": "sd-tiny", "task": "image-to-image", "prompt": "a cat", "steps": 2}


def png(width: int = 16, height: int = 16, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid tiny PNG whose header claims a huge image (IHDR rewritten, CRC fixed)."""
    data = bytearray(png(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.fixture
def make_app(redis_url, tmp_path):
    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": [{"name": "sd-tiny", "source": str(tmp_path), "family": "sd",
                                               "default_width": 64, "default_height": 64}]}))

    def make(**overrides):
        settings = load_settings(**{"redis_url": redis_url, "models_file": catalog, "auth": "disabled",
                                    "storage_root": tmp_path / "store", **overrides})
        return create_app(settings)
    return make


@pytest.fixture
def image_server():
    """A local HTTP server: /img.png, /big.png, /redirect/<n> (n hops, then the image), /to/<url>."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/redirect/"):
                hops = int(self.path.rsplit("/", 1)[1])
                self.send_response(302)
                self.send_header("Location", f"/redirect/{hops - 1}" if hops > 1 else "/img.png")
                self.end_headers()
            elif self.path.startswith("/to/"):
                self.send_response(302)
                self.send_header("Location", self.path[4:])
                self.end_headers()
            else:
                body = png() if self.path == "/img.png" else b"x" * 50_000
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _stored(app, job_id: str) -> Image.Image:
    services = app.extensions["kiln"]
    job = services.store.get(job_id)
    assert job.params["image_key"] == f"inputs/{job_id}/image.png"
    assert "image" not in job.params and "image_url" not in job.params
    return Image.open(io.BytesIO(services.storage.get(job.params["image_key"])))


def test_base64_image_is_stored_as_png_under_inputs(make_app):
    app = make_app()
    body = {**I2I, "image": "data:image/png;base64," + base64.b64encode(png()).decode()}
    response = app.test_client().post("/v1/jobs", json=body)
    assert response.status_code == 202, response.json
    assert _stored(app, response.json["id"]).size == (16, 16)


def test_multipart_upload_with_mask(make_app):
    app = make_app()
    data = {"request": json.dumps({**I2I, "task": "inpaint"}),
            "image": (io.BytesIO(png()), "a.png"), "mask_image": (io.BytesIO(png(color=(255, 255, 255))), "m.png")}
    response = app.test_client().post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.json
    job = app.extensions["kiln"].store.get(response.json["id"])
    assert job.params["mask_key"] == f"inputs/{job.id}/mask.png"
    mask = Image.open(io.BytesIO(app.extensions["kiln"].storage.get(job.params["mask_key"])))
    assert mask.mode == "L"


def test_url_image_when_private_addresses_are_allowed(make_app, image_server):
    app = make_app(fetch_allow_private=True)
    response = app.test_client().post("/v1/jobs", json={**I2I, "image_url": f"{image_server}/redirect/2"})
    assert response.status_code == 202, response.json
    assert _stored(app, response.json["id"]).size == (16, 16)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a.png", "http://localhost/a.png", "http://10.1.2.3/a.png",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/a.png",
                                 "http://0.0.0.0/a.png", "http://192.168.0.1/a.png", "http://[fe80::1]/a.png",
                                 "http://[::ffff:127.0.0.1]/a.png"])
def test_ssrf_private_addresses_refused(make_app, redis_keys, url):
    before = redis_keys()
    response = make_app().test_client().post("/v1/jobs", json={**I2I, "image_url": url})
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "address_not_allowed"
    assert response.json["error"]["field"] == "image_url"
    assert [k for k in redis_keys() if ":job:" in k] == [k for k in before if ":job:" in k]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"])
def test_other_schemes_refused(make_app, url):
    response = make_app().test_client().post("/v1/jobs", json={**I2I, "image_url": url})
    assert response.status_code == 422


def test_every_redirect_hop_is_checked(image_server, monkeypatch):
    """127.0.0.1 stands in for a public host; its redirect to 127.0.0.2 (private) is refused."""
    real = safehttp.check_address
    monkeypatch.setattr(safehttp, "check_address", lambda ip, allow: None if ip == "127.0.0.1" else real(ip, allow))
    port = image_server.rsplit(":", 1)[1]
    with pytest.raises(InputRefused) as refused:
        safehttp.request("GET", f"{image_server}/to/http://127.0.0.2:{port}/img.png", safehttp.Policy())
    assert refused.value.code == "address_not_allowed"


def test_redirects_are_bounded(image_server):
    policy = safehttp.Policy(max_redirects=2, allow_private=True)
    assert safehttp.request("GET", f"{image_server}/redirect/2", policy).status == 200
    with pytest.raises(InputRefused) as refused:
        safehttp.request("GET", f"{image_server}/redirect/3", policy)
    assert refused.value.code == "too_many_redirects"


def test_fetch_size_cap(image_server):
    with pytest.raises(InputRefused) as refused:
        safehttp.request("GET", f"{image_server}/big.png", safehttp.Policy(max_bytes=10_000, allow_private=True))
    assert refused.value.code == "too_large"


@pytest.mark.parametrize("data, code", [(bomb(), "too_many_pixels"), (bomb(5000, 5000), "too_many_pixels"),
                                        (png(100, 100), "too_many_pixels"), (b"GIF89a not an image", "bad_image"),
                                        (b"\x89PNG\r\n\x1a\n garbage", "bad_image")])
def test_image_bombs_and_junk_refused_before_decoding(make_app, data, code):
    app = make_app(input_max_pixels=64 * 64)
    body = {**I2I, "image": base64.b64encode(data).decode()}
    response = app.test_client().post("/v1/jobs", json=body)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == code and response.json["error"]["field"] == "image"


def test_byte_cap_and_bad_base64(make_app):
    client = make_app(input_max_bytes=1024).test_client()
    too_big = client.post("/v1/jobs", json={**I2I, "image": base64.b64encode(b"\0" * 4000).decode()})
    assert too_big.status_code == 422 and too_big.json["error"]["code"] == "too_large"
    bad = client.post("/v1/jobs", json={**I2I, "image": "not base64!!"})
    assert bad.status_code == 422 and bad.json["error"]["code"] == "bad_image"


def test_one_way_per_image_and_unknown_parts(make_app, image_server):
    client = make_app().test_client()
    both = client.post("/v1/jobs", json={**I2I, "image": base64.b64encode(png()).decode(),
                                         "image_url": f"{image_server}/img.png"})
    assert both.status_code == 422 and both.json["error"]["field"] == "image"
    data = {"request": json.dumps(I2I), "photo": (io.BytesIO(png()), "a.png")}
    unknown = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert unknown.status_code == 422 and unknown.json["error"]["field"] == "photo"
    data = {"request": "{not json", "image": (io.BytesIO(png()), "a.png")}
    assert client.post("/v1/jobs", data=data, content_type="multipart/form-data").status_code == 400
