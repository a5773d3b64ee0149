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
    epsilon = min_snr_weights(alpha_bar, gamma=5.0, prediction_type="epsilon")
    torch.testing.assert_close(epsilon, torch.tensor([5.0 / 999.0, 1.0, 1.0]), rtol=1e-3, atol=1e-6)
    v = min_snr_weights(alpha_bar, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(v, torch.tensor([5.0 / 1000.0, 0.5, (1 / 99) / (1 / 99 + 1)]), rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(alpha_bar, 5.0, "sample")


def test_schedule_has_almost_no_signal_left_at_the_last_step():
    """At t = T the sampler starts from pure noise; a schedule that leaves signal there teaches the
    model to read the picture from the noise instead of the prompt (Lin et al. 2024)."""
    from kiln_shapes import models

    alpha_bar = models.alphas_cumprod()
    assert alpha_bar[-1].sqrt() < 0.01
    assert models.scheduler_config()["prediction_type"] == "v_prediction"


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


def test_object_pixels_are_the_drawn_shape():
    from kiln_shapes import data

    scenes = data.sample_scenes(6, seed=3)
    x = torch.from_numpy(data.to_tensor_range(data.draw_batch(scenes)))
    found = train.object_pixels(x)[:, 0].numpy().astype(bool)
    for scene, mask in zip(scenes, found):
        coverage = data.shape_mask(scene.shape, *data.geometry(scene))
        assert (coverage[mask] > 0).all()  # nothing outside the shape
        assert mask[coverage > 0.5].all()  # everything mostly inside it
