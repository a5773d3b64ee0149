"""The training program, on the tiny preset: runs end to end, exports a loadable pipeline, resumes exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kiln_shapes import train
from kiln_shapes.train import TrainConfig, lr_at, min_snr_weights


def tiny_config(tmp_path, name: str, **overrides) -> TrainConfig:
    fields = dict(out_dir=str(tmp_path / name / "model"), work_dir=str(tmp_path / name), preset="tiny",
                  n_images=16, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1,
                  checkpoint_every=1, threads=1)
    return TrainConfig(**{**fields, **overrides})


def unet_weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(f"{model_dir}/unet/diffusion_pytorch_model.safetensors")


def test_tiny_training_exports_a_pipeline_kiln_runs(tmp_path):
    from worker.pipelines import DiffusionPipeline, StableDiffusionPipeline

    folder = train.run(tiny_config(tmp_path, "a"))
    assert (tmp_path / "a" / "checkpoint.pt").exists()
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the latents, not the SD default
    assert all(t.dtype == torch.float16 for t in unet_weights(folder).values())
    image = pipe("a red circle in the centre on a white background", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_checkpoint_exports_raw_or_ema_weights(tmp_path):
    cfg = tiny_config(tmp_path, "b", ema_decay=0.5)
    ema = unet_weights(train.run(cfg))
    raw = unet_weights(train.export_checkpoint(dataclasses.replace(cfg, out_dir=str(tmp_path / "raw")), "raw"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    with pytest.raises(ValueError, match="'ema' or 'raw'"):
        train.export_checkpoint(cfg, "best")


@pytest.mark.slow
def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    straight = train.run(tiny_config(tmp_path, "straight"))
    train.run(tiny_config(tmp_path, "resumed", unet_steps=1))
    resumed = train.run(tiny_config(tmp_path, "resumed"))  # picks up the checkpoint at unet step 1
    a, b = unet_weights(straight), unet_weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_warms_up_then_decays():
    rates = [lr_at(step, 1.0, warmup=10, total=100) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(rates[10:], rates[11:])) and rates[-1] == pytest.approx(0.1, abs=0.01)


def test_min_snr_weights_cap_the_easy_timesteps():
    alpha_bar = torch.tensor([0.999, 0.5, 0.01])  # SNR 999, 1, ~0.01
    weights = min_snr_weights(alpha_bar, gamma=5.0)
    torch.testing.assert_close(weights, torch.tensor([5.0 / 999.0, 1.0, 1.0]), rtol=1e-3, atol=1e-6)


def test_config_round_trips_through_the_command_line(tmp_path):
    from kiln_shapes.__main__ import main

    seen = {}
    original = train.run
    try:
        import kiln_shapes.__main__ as cli

        cli.run = lambda cfg: seen.setdefault("cfg", cfg)
        main(["train", "--unet-steps", "7", "--unet-lr", "0.002", "--work-dir", str(tmp_path)])
    finally:
        cli.run = original
    assert dataclasses.replace(TrainConfig(), unet_steps=7, unet_lr=0.002, work_dir=str(tmp_path)) == seen["cfg"]
