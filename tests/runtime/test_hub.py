"""The one Hub module: its offline rule, and a single model fetched by the same plan as a pipeline.

The pipeline side (plans, cache, variants, custom files) is in `tests/pipelines/test_hub.py`.
"""

from __future__ import annotations

import fnmatch
import logging

import huggingface_hub
import pytest
from huggingface_hub import constants

from tests.pipelines.hubcache import populate_cache
from worker.runtime import hub
from worker.runtime.hub import MissingFilesError, hub_offline, plan_files, resolve_model_folder

WEIGHTS = "diffusion_pytorch_model"


@pytest.fixture
def online(monkeypatch):
    """Neither huggingface_hub's constant nor the variable says offline."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize("value", ["1", "ON", "on", "Yes", "TRUE", "true", " 1 "])
def test_offline_accepts_what_huggingface_hub_accepts(online, monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline()
    assert constants._is_true(value.strip())  # huggingface_hub's own reading agrees


@pytest.mark.parametrize("value", ["", "0", "off", "no", "false", "2", "y"])
def test_offline_refuses_what_huggingface_hub_refuses(online, monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert not hub_offline()
    assert not constants._is_true(value)


def test_offline_honours_huggingface_hubs_constant(online, monkeypatch):
    """`huggingface_hub.constants.HF_HUB_OFFLINE` (set at its import, or by a program) counts too."""
    assert not hub_offline()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_offline()


def test_a_model_plan_is_one_folder_safetensors_first():
    listing = [
        "model_index.json", "unet/config.json", f"unet/{WEIGHTS}.safetensors", f"unet/{WEIGHTS}.bin",
        f"unet/{WEIGHTS}.fp16.safetensors", "vae/config.json", f"vae/{WEIGHTS}.safetensors",
    ]
    plan = plan_files(listing, {"unet": True}, require_variant=False)
    fetched = {f for f in listing if any(fnmatch.fnmatch(f, p) for p in plan.patterns)}
    assert fetched == {"unet/config.json", f"unet/{WEIGHTS}.safetensors"}


def test_a_model_at_the_repo_root_and_its_variant_fallback(caplog):
    listing = ["config.json", f"{WEIGHTS}.bin", "README.md"]
    with caplog.at_level(logging.WARNING, logger="worker.runtime.hub"):
        plan = plan_files(listing, {"": True}, variant="fp16", require_variant=False)
    assert plan.components[""].weights == (f"{WEIGHTS}.bin",) and plan.fallbacks == ("",)
    assert "no 'fp16' variant" in caplog.text
    with pytest.raises(MissingFilesError, match="no component has weights of variant 'fp16'"):
        plan_files(listing, {"": True}, variant="fp16")  # a pipeline's rule: the variant must exist
    with pytest.raises(MissingFilesError, match="in the repo's root"):
        plan_files(["config.json"], {"": True})


def test_model_download_fetches_only_its_folder(tmp_path, monkeypatch, online):
    """Online, the Hub faked: one listing, then `snapshot_download` of that model's plan only."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    listing = ["model_index.json", "unet/config.json", f"unet/{WEIGHTS}.safetensors", f"unet/{WEIGHTS}.bin",
               "vae/config.json", f"vae/{WEIGHTS}.safetensors"]
    calls = {}

    def fake_snapshot(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        calls.update(kwargs, repo_id=repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: listing)
    folder = resolve_model_folder("org/model", subfolder="unet", revision="v2")
    assert folder == tmp_path / "snapshot" / "unet"
    assert calls["repo_id"] == "org/model" and calls["revision"] == "v2"
    fetched = {f for f in listing if any(fnmatch.fnmatch(f, p) for p in calls["allow_patterns"])}
    assert fetched == {"unet/config.json", f"unet/{WEIGHTS}.safetensors"}


def test_model_from_a_complete_cache_uses_no_network(tmp_path, monkeypatch, online):
    source = tmp_path / "source"
    (source / "vae").mkdir(parents=True)
    (source / "vae" / "config.json").write_text("{}")
    (source / "vae" / f"{WEIGHTS}.safetensors").write_bytes(b"weights")
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = populate_cache(cache, "org/model", source)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used although the cache is complete")

    monkeypatch.setattr(hub, "_download", no_network)
    assert resolve_model_folder("org/model", subfolder="vae") == snapshot / "vae"


def test_model_offline_cache_miss_names_the_flag(tmp_path, monkeypatch, online):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    with pytest.raises(MissingFilesError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve_model_folder("org/absent", subfolder="unet")


def test_hub_failures_are_missing_files_errors(tmp_path, monkeypatch, online):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    def unreachable(self, repo_id, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    with pytest.raises(MissingFilesError, match="cannot fetch org/model@main from the Hub: connection refused"):
        resolve_model_folder("org/model", subfolder="unet")
    with pytest.raises(MissingFilesError, match="neither an existing folder nor a Hub repo id"):
        resolve_model_folder("a/b/c")
