"""Which files a load needs (`plan_files`) and resolving them through the huggingface_hub cache."""

from __future__ import annotations

import fnmatch
import logging

import numpy as np
import pytest
import torch

from tests.pipelines.hubcache import populate_cache
from tests.pipelines.tiny import seeded
from worker.pipelines import DDPMPipeline, DiffusionPipeline
from worker.runtime import hub
from worker.runtime.hub import MissingFilesError, plan_files

SD_FILES = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.msgpack",
    "unet/model.onnx",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16-00001-of-00002.safetensors",
    "text_encoder/model.fp16-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.fp16.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
    "v1-5-pruned.ckpt",
]
COMPONENTS = {"unet": True, "vae": True, "text_encoder": True, "tokenizer": False, "scheduler": False}


def test_plan_prefers_safetensors_and_skips_other_formats():
    plan = plan_files(SD_FILES, COMPONENTS)
    assert plan.components["unet"].weights == ("unet/diffusion_pytorch_model.safetensors",)
    assert plan.components["vae"].weights == ("vae/diffusion_pytorch_model.bin",)  # only a pickle exists
    assert plan.components["text_encoder"].weights == ("text_encoder/model.safetensors",)
    fetched = [f for f in SD_FILES if any(fnmatch.fnmatch(f, p) for p in plan.patterns)]
    assert not any(f.endswith((".msgpack", ".onnx", ".ckpt", "fp16.safetensors")) for f in fetched)
    assert "unet/diffusion_pytorch_model.bin" not in fetched
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"} <= set(fetched)


def test_plan_variant_with_fallback_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="worker.runtime.hub"):
        plan = plan_files(SD_FILES, COMPONENTS, variant="fp16")
    assert plan.components["unet"].variant == "fp16"
    assert plan.components["unet"].weights == ("unet/diffusion_pytorch_model.fp16.safetensors",)
    assert plan.components["text_encoder"].weights == (
        "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.fp16.json",
    )
    assert plan.components["vae"].variant is None and plan.fallbacks == ("vae",)
    assert "'vae' has no 'fp16' variant" in caplog.text


def test_plan_errors_name_what_is_missing():
    with pytest.raises(MissingFilesError, match="no component has weights of variant 'bf16'"):
        plan_files(SD_FILES, COMPONENTS, variant="bf16")
    with pytest.raises(MissingFilesError, match="component 'unet' has no weights"):
        plan_files(["model_index.json", "unet/config.json"], {"unet": True})
    only_fp16 = ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    with pytest.raises(MissingFilesError, match=r"has variants \['fp16'\]: pass variant"):
        plan_files(only_fp16, {"unet": True})
    with pytest.raises(MissingFilesError, match="'safety_checker'/ is missing"):
        plan_files(SD_FILES, {"safety_checker": True})


def test_not_a_folder_nor_a_repo_id():
    with pytest.raises(MissingFilesError, match="neither an existing folder nor a Hub repo id"):
        DiffusionPipeline.from_pretrained("/no/such/folder")


def test_loads_from_the_cache_offline(hub_cache, ddpm_saved):
    ref, folder = ddpm_saved
    populate_cache(hub_cache, "kiln-test/tiny-ddpm", folder)
    pipe = DiffusionPipeline.from_pretrained("kiln-test/tiny-ddpm")
    assert type(pipe) is DDPMPipeline
    expected = ref(generator=seeded(0), num_inference_steps=2, output_type="np").images
    got = pipe(generator=seeded(0), num_inference_steps=2, output_type="np").images
    assert np.abs(got - expected).max() < 1e-3


def test_offline_cache_miss_is_a_clear_error(hub_cache, ddpm_saved):
    populate_cache(hub_cache, "kiln-test/tiny-ddpm", ddpm_saved[1])
    with pytest.raises(MissingFilesError, match="HF_HUB_OFFLINE"):
        DiffusionPipeline.from_pretrained("kiln-test/tiny-ddpm", revision="v2")
    with pytest.raises(MissingFilesError, match="not in the Hugging Face cache"):
        DiffusionPipeline.from_pretrained("kiln-test/other")


def test_incomplete_snapshot_names_the_missing_component(hub_cache, ddpm_saved):
    populate_cache(hub_cache, "kiln-test/broken", ddpm_saved[1], skip=("unet/diffusion_pytorch_model",))
    with pytest.raises(MissingFilesError, match="component 'unet' has no weights"):
        DiffusionPipeline.from_pretrained("kiln-test/broken")


def test_complete_cache_needs_no_network(hub_cache, ddpm_saved, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used although the cache is complete")

    monkeypatch.setattr(hub, "_download", no_network)
    populate_cache(hub_cache, "kiln-test/tiny-ddpm", ddpm_saved[1])
    assert type(DiffusionPipeline.from_pretrained("kiln-test/tiny-ddpm")) is DDPMPipeline


def test_cache_variant_is_loaded(hub_cache, ddpm_saved, tmp_path):
    import diffusers

    source = tmp_path / "src"
    ref = ddpm_saved[0]
    ref.save_pretrained(source)
    doubled = diffusers.UNet2DModel.from_config(ref.unet.config)
    doubled.load_state_dict({k: v * 2 for k, v in ref.unet.state_dict().items()})
    doubled.save_pretrained(source / "unet", variant="fp16")
    populate_cache(hub_cache, "kiln-test/variants", source)
    plain = DiffusionPipeline.from_pretrained("kiln-test/variants")
    fp16 = DiffusionPipeline.from_pretrained("kiln-test/variants", variant="fp16")
    weight = "conv_in.weight"
    assert torch.equal(fp16.unet.state_dict()[weight], 2 * plain.unet.state_dict()[weight])
    assert fp16.unet.dtype == torch.float32  # no torch_dtype: variant weights load as float32


def test_download_requests_only_the_planned_files(hub_cache, ddpm_saved, monkeypatch):
    """Online path with the Hub faked: one listing, then snapshot_download with allow patterns."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    source = ddpm_saved[1]
    listing = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    listing += ["unet/diffusion_pytorch_model.bin", "unet/flax_model.msgpack"]
    calls = {}

    def fake_index(repo_id, filename, **kwargs):
        return str(source / filename)

    def fake_snapshot(repo_id, **kwargs):
        calls.update(kwargs)
        return str(populate_cache(hub_cache, repo_id, source))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_index)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: listing)
    monkeypatch.setattr(hub, "_cached_snapshot", lambda *args: None)
    pipe = DiffusionPipeline.from_pretrained("kiln-test/online", revision="abc", token="secret")
    assert type(pipe) is DDPMPipeline
    assert calls["revision"] == "abc" and calls["token"] == "secret"
    patterns = calls["allow_patterns"]
    assert "unet/diffusion_pytorch_model.safetensors" in patterns and "model_index.json" in patterns
    assert not any(p.endswith((".bin", ".msgpack")) for p in patterns)
