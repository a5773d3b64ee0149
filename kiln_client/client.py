"""`Client`: submit, get, wait, cancel, stream, download and list jobs; manage keys."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from kiln_client import sse

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class KilnAPIError(Exception):
    """An error answer from the API: HTTP status plus the API's `code`, `message`, `field`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after


class Client:
    """Talks to one Kiln API. Defaults come from `KILN_URL` and `KILN_API_KEY`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = (base_url or os.environ.get("KILN_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("KILN_API_KEY")
        self.timeout = timeout
        self.session = requests.Session()
        if self.api_key:
            self.session.headers["Authorization"] = f"Bearer {self.api_key}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, f"{self.base_url}{path}", **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response

    # Jobs ---------------------------------------------------------------------------------------
    def submit(self, idempotency_key: str | None = None, files: dict[str, bytes] | None = None,
               **params: Any) -> dict:
        """Submit a job; `files` uploads `image` / `mask_image` bytes as multipart."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if files:
            parts = {name: (f"{name}.png", data, "application/octet-stream") for name, data in files.items()}
            return self._request("POST", "/v1/jobs", data={"request": json.dumps(params)}, files=parts,
                                 headers=headers).json()
        return self._request("POST", "/v1/jobs", json=params, headers=headers).json()

    def get(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def list(self, **filters: Any) -> Iterator[dict]:
        """Every job matching the filters (status, model, created_after, created_before, limit),
        newest first, following cursors page by page."""
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._request("GET", "/v1/jobs", params=params).json()
            yield from page["jobs"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def stream(self, job_id: str) -> Iterator[sse.Event]:
        """The job's Server-Sent Events (`status` with the job, `progress` with step/total)."""
        with self._request("GET", f"/v1/jobs/{job_id}/events", stream=True,
                           headers={"Accept": "text/event-stream"}, timeout=(self.timeout, 120)) as response:
            yield from sse.parse(response.iter_lines(decode_unicode=True))

    def wait(self, job_id: str, timeout: float = 600.0, on_progress=None, poll_s: float = 0.5) -> dict:
        """Block until the job is terminal and return it; `on_progress(step, total)` is called on
        every progress event. Uses the event stream, and polling if the stream is unavailable."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for event in self.stream(job_id):
                    data = json.loads(event.data)
                    if event.event == "progress" and on_progress:
                        on_progress(data["step"], data["total"])
                    if event.event == "status" and data["status"] in TERMINAL:
                        return data
                    if time.monotonic() > deadline:
                        break
            except (requests.ConnectionError, requests.Timeout, KilnAPIError):
                job = self.get(job_id)
                if job["status"] in TERMINAL:
                    return job
                time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")

    def download(self, job_id: str, index: int = 0, path: str | Path | None = None) -> bytes:
        """An output image's bytes (following a presigned redirect); also written to `path`."""
        data = self._request("GET", f"/v1/jobs/{job_id}/outputs/{index}").content
        if path is not None:
            Path(path).write_bytes(data)
        return data

    # Keys (admin) -------------------------------------------------------------------------------
    def create_key(self, role: str = "user", name: str = "", owner: str | None = None) -> dict:
        body = {"role": role, "name": name, **({"owner": owner} if owner else {})}
        return self._request("POST", "/v1/keys", json=body).json()

    def list_keys(self) -> list[dict]:
        return self._request("GET", "/v1/keys").json()["keys"]

    def revoke_key(self, key_id: str) -> dict:
        return self._request("DELETE", f"/v1/keys/{key_id}").json()

    def me(self) -> dict:
        return self._request("GET", "/v1/me").json()


def _error(response: requests.Response) -> KilnAPIError:
    try:
        body = response.json()["error"]
        code, message, field = body["code"], body["message"], body.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "http_error", response.text[:200] or response.reason, None
    retry = response.headers.get("Retry-After")
    return KilnAPIError(response.status_code, code, message, field,
                        float(retry) if retry and retry.isascii() and retry.isdigit() else None)
