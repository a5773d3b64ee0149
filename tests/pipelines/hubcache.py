"""Build a huggingface_hub cache by hand, laid out exactly as `snapshot_download` leaves it:

    <cache>/models--org--name/blobs/<sha256 of file>
    <cache>/models--org--name/snapshots/<commit>/<path>  -> symlink to ../../blobs/<sha256>
    <cache>/models--org--name/refs/<revision>             (text: the commit hash)

so Hub loading can be tested offline (`HF_HUB_OFFLINE=1`) and without network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest


def populate_cache(cache: Path, repo_id: str, source: Path, revision: str = "main",
                   skip: tuple[str, ...] = ()) -> Path:
    """Copy every file of `source` into the cache as one snapshot; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source).as_posix()
        if any(rel.startswith(s) or rel == s for s in skip):
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty cache folder set as `HF_HUB_CACHE`, with offline mode on."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
