"""FluxTransformer2DModel vs diffusers' FluxTransformer2DModel on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch
from safetensors.torch import save_file

from worker.models import FluxTransformer2DModel, Transformer2DModelOutput

from .parity import rel_err, save

CONFIG = dict(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=True,
              axes_dims_rope=(4, 6, 6))
# FLUX.1's real widths (24 heads x 128, T5 4096, CLIP 768), one block of each kind.
FULL_WIDTH = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                  axes_dims_rope=(16, 56, 56))
ROOT = Path(__file__).resolve().parents[2]


def _ids(height: int, width: int, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX position ids: image (h * w, 3) = (0, row, column), text (M, 3) zeros."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    img = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return img, torch.zeros(text_len, 3)


def _inputs(config: dict, batch: int = 2, height: int = 3, width: int = 5, text_len: int = 7) -> dict:
    """Random inputs on a non-square latent grid, one timestep (and guidance) per row."""
    img_ids, txt_ids = _ids(height, width, text_len)
    inputs = dict(
        hidden_states=torch.randn(batch, height * width, config["in_channels"]),
        encoder_hidden_states=torch.randn(batch, text_len, config["joint_attention_dim"]),
        pooled_projections=torch.randn(batch, config["pooled_projection_dim"]),
        timestep=torch.linspace(0.9, 0.2, batch), img_ids=img_ids, txt_ids=txt_ids,
    )
    if config["guidance_embeds"]:
        inputs["guidance"] = torch.linspace(1.0, 4.5, batch)
    return inputs


def _run(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["guidance", "no-guidance"])
def test_diffusers_checkpoint_loads_and_matches(tmp_path, guidance_embeds):
    config = dict(CONFIG, guidance_embeds=guidance_embeds)
    reference = diffusers.FluxTransformer2DModel(**config).eval()
    ours = FluxTransformer2DModel.from_pretrained(save(reference, tmp_path))
    inputs = _inputs(config, batch=3)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4
    assert ours.config.guidance_embeds is guidance_embeds and list(ours.config.axes_dims_rope) == [4, 6, 6]


def test_our_checkpoint_loads_in_diffusers(tmp_path):
    ours = FluxTransformer2DModel(**CONFIG).eval()
    reference = diffusers.FluxTransformer2DModel.from_pretrained(save(ours, tmp_path)).eval()
    inputs = _inputs(CONFIG)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4


def test_same_seed_gives_diffusers_init():
    torch.manual_seed(3)
    expected = diffusers.FluxTransformer2DModel(**CONFIG).state_dict()
    torch.manual_seed(3)
    actual = FluxTransformer2DModel(**CONFIG).state_dict()
    assert set(actual) == set(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_rows_of_a_batch_are_independent():
    """The step batcher concatenates rows of different jobs: each row gets what it gets alone."""
    model = FluxTransformer2DModel(**CONFIG).eval()
    inputs = _inputs(CONFIG, batch=3)
    batched = _run(model, inputs)
    for row in range(3):
        alone = {k: (v[row:row + 1] if k not in ("img_ids", "txt_ids") else v) for k, v in inputs.items()}
        assert rel_err(_run(model, alone)[0], batched[row]) < 1e-5


def test_scalar_timestep_old_3d_ids_and_tuple_output(tmp_path):
    reference = diffusers.FluxTransformer2DModel(**CONFIG).eval()
    ours = FluxTransformer2DModel.from_pretrained(save(reference, tmp_path))
    inputs = dict(_inputs(CONFIG), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.0]))  # one for all rows
    old_ids = dict(inputs, img_ids=inputs["img_ids"][None].expand(2, -1, -1),
                   txt_ids=inputs["txt_ids"][None].expand(2, -1, -1), timestep=torch.tensor(0.5))  # 0-d
    with torch.no_grad():
        expected = reference(**inputs).sample
        output = ours(**old_ids, return_dict=False)
        wrapped = ours(**inputs)
    assert isinstance(output, tuple) and rel_err(output[0], expected) < 1e-4
    assert isinstance(wrapped, Transformer2DModelOutput) and torch.equal(wrapped[0], wrapped.sample)


@pytest.mark.parametrize("repeat", [False, True], ids=["interval", "repeat"])
def test_controlnet_residuals_match_diffusers(tmp_path, repeat):
    config = dict(CONFIG, num_layers=3, num_single_layers=3)
    reference = diffusers.FluxTransformer2DModel(**config).eval()
    ours = FluxTransformer2DModel.from_pretrained(save(reference, tmp_path))
    inputs = _inputs(config)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shape = inputs["hidden_states"].shape[:2] + (dim,)
    inputs.update(controlnet_block_samples=[torch.randn(shape) for _ in range(2)],
                  controlnet_single_block_samples=[torch.randn(shape) for _ in range(2)],
                  controlnet_blocks_repeat=repeat)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_sharded_variant_checkpoint_loads_in_dtype(tmp_path, dtype):
    variant = "fp16" if dtype == torch.float16 else "bf16"
    reference = diffusers.FluxTransformer2DModel(**CONFIG).eval().to(dtype)
    reference.save_pretrained(tmp_path, variant=variant, max_shard_size="40KB")
    assert len(list(tmp_path.glob(f"diffusion_pytorch_model.{variant}-*-of-*.safetensors"))) > 1
    ours = FluxTransformer2DModel.from_pretrained(tmp_path, variant=variant, torch_dtype=dtype)
    assert ours.dtype == dtype
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in reference.state_dict().items())
    upcast = FluxTransformer2DModel.from_pretrained(tmp_path, variant=variant)
    assert upcast.dtype == torch.float32
    half = {k: (v.to(dtype) if k not in ("img_ids", "txt_ids") else v) for k, v in _inputs(CONFIG).items()}
    actual, expected = _run(ours, half).float(), _run(reference, half).float()
    assert actual.dtype == torch.float32 and rel_err(actual, expected) < 2e-2


def test_gradient_checkpointing_gives_the_same_gradients():
    model = FluxTransformer2DModel(**CONFIG)
    inputs = _inputs(CONFIG)
    calls = []
    model.single_transformer_blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    grads, block_runs = [], []
    for checkpointing in (False, True):
        model.zero_grad()
        calls.clear()
        model.gradient_checkpointing = checkpointing  # what enable_gradient_checkpointing() switches
        model(**inputs).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        block_runs.append(len(calls))
    assert block_runs == [1, 2]  # recomputed in backward
    assert rel_err(grads[1], grads[0]) < 1e-5


def test_wrong_inputs_are_named():
    model = FluxTransformer2DModel(**CONFIG).eval()
    inputs = _inputs(CONFIG)
    with pytest.raises(ValueError, match="guidance"):
        _run(model, {k: v for k, v in inputs.items() if k != "guidance"})
    with pytest.raises(ValueError, match="img_ids"):
        _run(model, dict(inputs, img_ids=inputs["img_ids"][0]))
    with pytest.raises(ValueError, match="txt_ids"):
        _run(model, {k: v for k, v in inputs.items() if k != "txt_ids"})
    with pytest.raises(ValueError, match="joint_attention_kwargs"):
        _run(model, dict(inputs, joint_attention_kwargs={"ip_adapter_image_embeds": torch.zeros(1)}))
    # A LoRA scale with no adapters loaded changes nothing.
    assert torch.equal(_run(model, dict(inputs, joint_attention_kwargs={"scale": 0.5})), _run(model, inputs))
    with pytest.raises(ValueError, match="axes_dims_rope"):
        FluxTransformer2DModel(**dict(CONFIG, axes_dims_rope=(4, 4, 4)))


@pytest.mark.slow
def test_full_width_flux_matches_diffusers():
    reference = diffusers.FluxTransformer2DModel(**FULL_WIDTH).eval()
    with torch.device("meta"):
        ours = FluxTransformer2DModel.from_config(reference.config)
    ours.load_weights(reference.state_dict())  # shares the tensors: no second copy
    ours.eval()
    inputs = _inputs(FULL_WIDTH, batch=2, height=4, width=6, text_len=16)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4


def _write_checkpoint(folder: Path, config: dict, dtype: torch.dtype) -> None:
    """Config + one safetensors file of constant weights, written without building a model in memory."""
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    model.save_config(folder)
    tensors = {key: torch.full(t.shape, 0.01, dtype=dtype) for key, t in model.state_dict().items()}  # values unused
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


def peak_memory_probe(folder: str, dtype: str) -> None:
    """Run in a fresh process: load `folder`, print peak RSS growth and weight bytes (JSON)."""
    def status(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status("VmRSS")
    model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=getattr(torch, dtype))
    loaded = status("VmHWM") - before
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # Read one element per 2 KB (every page) of each weight: pages the whole file in, no big temporaries.
    checksum = sum(float(t.reshape(-1)[::1024].float().sum()) for t in model.state_dict().values())
    print(json.dumps({"peak_growth": loaded, "peak_growth_after_use": status("VmHWM") - before, "weights": weights,
                      "dtype": str(model.dtype), "finite": checksum == checksum}))


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_loading_peak_memory_is_about_one_copy_of_the_weights(tmp_path):
    # Full width, one single-stream block: ~206 M parameters, ~412 MB in bf16.
    _write_checkpoint(tmp_path, dict(FULL_WIDTH, num_layers=0), torch.bfloat16)
    code = ("from tests.models.test_transformer_flux import peak_memory_probe; "
            f"peak_memory_probe({str(tmp_path)!r}, 'bfloat16')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["weights"] > 400e6 and result["dtype"] == "torch.bfloat16" and result["finite"]
    # The safetensors file is memory-mapped and assigned in place: loading itself adds almost nothing,
    # and once every weight has been read the process holds one copy of the weights, not two.
    assert result["peak_growth"] < 1.3 * result["weights"], result
    assert 0.9 * result["weights"] < result["peak_growth_after_use"] < 1.3 * result["weights"], result
