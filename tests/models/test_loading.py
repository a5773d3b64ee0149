"""Loading checkpoints: variants, shards, pickles, legacy names, Hub resolution and failures."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import diffusers
import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

from worker.models import ModelConfigError, ModelLoadError, UNet2DModel

from .parity import rel_err, save

CONFIG = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
              down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def reference():
    return diffusers.UNet2DModel(**CONFIG).eval()


def _out(model, dtype=torch.float32):
    torch.manual_seed(1)
    sample = torch.randn(1, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        return model(sample, torch.tensor([50])).sample


def _rewrite(folder: Path, edit) -> None:
    """Apply `edit(state_dict)` to the saved safetensors file in place."""
    state = load_file(folder / WEIGHTS)
    edit(state)
    save_file(state, folder / WEIGHTS, metadata={"format": "pt"})


def test_fp16_variant_upcasts_without_dtype_and_casts_with_it(tmp_path, reference):
    reference.half().save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    upcast = UNet2DModel.from_pretrained(tmp_path, variant="fp16")
    assert upcast.dtype == torch.float32 and not upcast.training
    half = UNet2DModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert torch.equal(half.conv_in.weight.float(), upcast.conv_in.weight)


def test_missing_variant_falls_back_to_plain_weights(tmp_path, reference, caplog):
    save(reference, tmp_path)
    with caplog.at_level(logging.WARNING, logger="worker.models.weights"):
        model = UNet2DModel.from_pretrained(tmp_path, variant="fp16")
    assert "fp16" in caplog.text
    assert rel_err(_out(model), _out(reference)) < 1e-4


def test_sharded_variant_written_by_diffusers_loads(tmp_path, reference):
    reference.save_pretrained(tmp_path, variant="fp16", max_shard_size="20KB")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in names
    assert any(n.startswith("diffusion_pytorch_model.fp16-00001-of-") for n in names)
    model = UNet2DModel.from_pretrained(tmp_path, variant="fp16")
    assert rel_err(_out(model), _out(reference)) < 1e-4


def test_our_sharded_save_loads_in_diffusers_and_ours(tmp_path):
    ours = UNet2DModel(**CONFIG).eval()
    ours.save_pretrained(tmp_path, variant="fp16", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path, variant="fp16")
    again = UNet2DModel.from_pretrained(tmp_path, variant="fp16")
    assert rel_err(_out(again), _out(ours)) < 1e-5  # same weights; kernels may differ in the last bits
    assert rel_err(_out(theirs), _out(ours)) < 1e-4


def test_missing_shard_is_named(tmp_path):
    UNet2DModel(**CONFIG).save_pretrained(tmp_path, max_shard_bytes=20_000)
    shard = sorted(tmp_path.glob("*-00002-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=shard.name):
        UNet2DModel.from_pretrained(tmp_path)


def test_bin_checkpoint_loads_weights_only(tmp_path, reference):
    reference.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    model = UNet2DModel.from_pretrained(tmp_path)
    assert rel_err(_out(model), _out(reference)) < 1e-4


class _Payload:
    """Not a tensor: a weights-only unpickler must refuse to build it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_bin_with_code_is_refused(tmp_path, reference):
    save(reference, tmp_path)
    (tmp_path / WEIGHTS).unlink()
    with open(tmp_path / "diffusion_pytorch_model.bin", "wb") as handle:
        pickle.dump({"conv_in.weight": _Payload()}, handle, protocol=2)
    with pytest.raises(ModelLoadError, match="weights-only"):
        UNet2DModel.from_pretrained(tmp_path)


def test_truncated_file_is_a_clear_error(tmp_path, reference):
    save(reference, tmp_path)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        UNet2DModel.from_pretrained(tmp_path)


def test_garbage_file_is_a_clear_error(tmp_path, reference):
    save(reference, tmp_path)
    (tmp_path / WEIGHTS).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=WEIGHTS):
        UNet2DModel.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(tmp_path, reference):
    save(reference, tmp_path)

    def edit(state):
        state.pop("conv_out.bias")
        state["extra.weight"] = torch.zeros(2)

    _rewrite(tmp_path, edit)
    with pytest.raises(ModelLoadError) as info:
        UNet2DModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "missing keys (1): conv_out.bias" in message
    assert "unexpected keys (1): extra.weight" in message


def test_wrong_shapes_are_named(tmp_path, reference):
    save(reference, tmp_path)
    _rewrite(tmp_path, lambda state: state.update({"conv_out.bias": torch.zeros(5)}))
    with pytest.raises(ModelLoadError, match=r"conv_out.bias: checkpoint \(5,\) vs model \(3,\)"):
        UNet2DModel.from_pretrained(tmp_path)


def test_config_for_another_architecture_is_rejected(tmp_path, reference):
    save(reference, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "block_out_channels": [8, 32]}))
    with pytest.raises(ModelLoadError, match="wrong shapes"):
        UNet2DModel.from_pretrained(tmp_path)


def test_unknown_block_type_lists_known_ones():
    with pytest.raises(ModelConfigError, match=r"unknown down block type 'FancyBlock2D'; known: \[.*'DownBlock2D'"):
        UNet2DModel(**{**CONFIG, "down_block_types": ("FancyBlock2D", "AttnDownBlock2D")})


def test_no_weights_is_a_clear_error(tmp_path, reference):
    save(reference, tmp_path)
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match="no weights in"):
        UNet2DModel.from_pretrained(tmp_path)


def test_legacy_attention_names_and_conv_shapes_are_converted(tmp_path, reference):
    save(reference, tmp_path)
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def edit(state):
        for key in [k for k in state if ".attentions." in k]:
            for new, old in legacy.items():
                if f".{new}." in key:
                    tensor = state.pop(key)
                    tensor = tensor[:, :, None, None] if tensor.ndim == 2 else tensor
                    state[key.replace(f".{new}.", f".{old}.")] = tensor.contiguous()

    _rewrite(tmp_path, edit)
    assert any(".query.weight" in k for k in load_file(tmp_path / WEIGHTS))
    model = UNet2DModel.from_pretrained(tmp_path)
    assert rel_err(_out(model), _out(reference)) < 1e-4


def test_subfolder_of_a_local_folder(tmp_path, reference):
    save(reference, tmp_path / "unet")
    model = UNet2DModel.from_pretrained(tmp_path, subfolder="unet")
    assert rel_err(_out(model), _out(reference)) < 1e-4
    with pytest.raises(ModelLoadError, match="no subfolder 'vae'"):
        UNet2DModel.from_pretrained(tmp_path, subfolder="vae")


def test_repo_id_goes_through_snapshot_download(tmp_path, reference, monkeypatch):
    save(reference, tmp_path / "snapshot" / "unet")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = UNet2DModel.from_pretrained("someone/tiny-ddpm", subfolder="unet", revision="v1")
    assert rel_err(_out(model), _out(reference)) < 1e-4
    repo_id, kwargs = calls[0]
    assert repo_id == "someone/tiny-ddpm" and kwargs["revision"] == "v1"
    assert kwargs["local_files_only"] is True
    assert len(calls) == 1  # the cached snapshot holds the model: nothing more is fetched


def test_offline_cache_miss_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        UNet2DModel.from_pretrained("nobody/not-cached", subfolder="unet")


def test_save_writes_diffusers_layout(tmp_path):
    model = UNet2DModel(**CONFIG)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel" and config["block_out_channels"] == [8, 16]
