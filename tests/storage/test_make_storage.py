"""Building a backend by name, as the settings do."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import KilnError
from shared.storage import BACKENDS, InvalidArgument, LocalStorage, S3Storage, make_storage


def test_local_kind_builds_a_local_storage(tmp_path: Path) -> None:
    storage = make_storage("local", root=tmp_path, fsync=False)

    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path


def test_s3_kind_builds_an_s3_storage_without_touching_the_network() -> None:
    storage = make_storage(
        "s3", bucket="kiln", endpoint_url="http://127.0.0.1:9", access_key="k", secret_key="s", path_style=False
    )

    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.endpoint_url) == ("kiln", "http://127.0.0.1:9")


def test_registry_names_match_backend_kinds() -> None:
    assert {name: backend.kind for name, backend in BACKENDS.items()} == {"local": "local", "s3": "s3"}


def test_an_unknown_kind_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgument, match="unknown storage kind 'gcs': expected one of local, s3") as caught:
        make_storage("gcs", bucket="kiln")
    assert isinstance(caught.value, KilnError) and caught.value.field == "storage"


def test_an_unknown_option_lists_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"local storage does not take bucket, region: it accepts root, fsync"):
        make_storage("local", root=tmp_path, bucket="kiln", region="x")
