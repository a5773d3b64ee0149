"""Teach the kiln-shapes VAE every palette colour without moving the latents its models learnt.

The bundled VAE was trained on the six base colours only: it decodes a drawn pink shape as orange
or red, and on a black background its encoder gives pink the latent of orange, so no adapter of the
UNet can make the model draw pink. This fine-tune trains the decoder (and, with `train_encoder`,
the encoder) on scenes of every palette colour, while an anchor loss keeps the encoder's posterior
(mean and std) of every base-colour scene where the original encoder put it: the latents the
bundled UNet and FLUX models were trained on keep their meaning, so those models need no
retraining, and only the new colours get latents of their own.

Held-out combinations (`data.split_combinations` for the base colours, `lora_train.colour_split`
for adapter colours) are kept out of these images too.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kiln_shapes import data, evaluate
from kiln_shapes.train import lr_at, object_pixels, optimise, set_lr

logger = logging.getLogger(__name__)


@dataclass
class VaeTuneConfig:
    """Defaults: the recipe of the VAE shipped in models/kiln-shapes/vae (docs/kiln-shapes.md)."""

    model: str = "models/kiln-shapes"  # a Diffusers-layout folder whose `vae` is tuned
    anchor_model: str = ""  # whose encoder the base-colour latents stay near (default: `model`)
    out_dir: str = "/tmp/kiln-shapes-vae/vae"
    train_encoder: bool = True
    anchor_weight: float = 10.0
    seed: int = 0
    n_images: int = 4000
    steps: int = 600
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 20
    object_weight: float = 10.0
    threads: int = 1


def palette_combinations() -> list[tuple]:
    """Every palette combination that no held-out prompt set uses."""
    from kiln_shapes.lora_train import colour_split

    held = set(data.split_combinations()[1])
    for colour in data.ADAPTER_COLOURS:
        held.update(colour_split(colour)[1])
    combos = itertools.product(data.SHAPES, data.PALETTE, data.SIZES, data.POSITIONS, data.BACKGROUNDS)
    return [c for c in combos if c not in held]


def palette_loss(vae: torch.nn.Module, anchor: torch.nn.Module, x: torch.Tensor, base: torch.Tensor,
                 gen: torch.Generator, cfg: VaeTuneConfig) -> torch.Tensor:
    """Object-weighted L1 + MSE of decoding a posterior sample, plus `anchor_weight` times the
    squared distance of the base-colour rows' (`base`, (B,) bool) posterior mean and std from the
    anchor encoder's."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
    recon = vae.decode(z).sample
    weight = 1.0 + cfg.object_weight * object_pixels(x)
    error = (recon - x).abs() + (recon - x).pow(2)
    loss = (weight * error).mean() / weight.mean()
    if cfg.train_encoder and base.any():
        with torch.no_grad():
            target = anchor.encode(x[base]).latent_dist
        drift = (posterior.mean[base] - target.mean).pow(2) + (posterior.std[base] - target.std).pow(2)
        loss = loss + cfg.anchor_weight * drift.mean()
    return loss


def trainable_parameters(vae: torch.nn.Module, train_encoder: bool) -> list[torch.nn.Parameter]:
    """The decoder side (post_quant_conv, when the VAE has one, and decoder), and the encoder side too."""
    parts = [vae.decoder, getattr(vae, "post_quant_conv", None)]
    if train_encoder:
        parts += [vae.encoder, getattr(vae, "quant_conv", None)]
    return [p for part in parts if part is not None for p in part.parameters()]


def tune_vae(cfg: VaeTuneConfig) -> Path:
    """Fine-tune the VAE and save it (fp16, same config) in `cfg.out_dir`; its folder."""
    from worker.models import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    vae = AutoencoderKL.from_pretrained(cfg.model, subfolder="vae", torch_dtype=torch.float32)
    anchor = AutoencoderKL.from_pretrained(cfg.anchor_model or cfg.model, subfolder="vae", torch_dtype=torch.float32)
    anchor.requires_grad_(False).eval()
    vae.requires_grad_(False)
    params = trainable_parameters(vae, cfg.train_encoder)
    for p in params:
        p.requires_grad_(True)
    scenes = data.sample_scenes(cfg.n_images, seed=cfg.seed, combinations=palette_combinations())
    images = torch.from_numpy(data.to_tensor_range(data.draw_batch(scenes)))
    base = torch.tensor([s.colour in data.COLOURS for s in scenes])
    logger.info("VAE palette fine-tune on %d images; config %s", len(images), asdict(cfg))
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    vae.train()
    started = time.monotonic()
    for step in range(cfg.steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7 * 100_003 + step)
        idx = torch.randint(0, len(images), (cfg.batch,), generator=gen)
        set_lr(optimiser, lr_at(step, cfg.lr, cfg.warmup, cfg.steps))
        loss = palette_loss(vae, anchor, images[idx], base[idx], gen, cfg)
        optimise(optimiser, loss, params)
        if (step + 1) % 20 == 0:
            logger.info("vae step %d/%d loss %.5f (%.2f s/step)", step + 1, cfg.steps, loss.item(),
                        (time.monotonic() - started) / (step + 1))
    vae.eval()
    vae.half().save_pretrained(cfg.out_dir)
    return Path(cfg.out_dir)


@torch.no_grad()
def reconstruction_scores(vae_folder: str, colours: list[str], n: int = 120, seed: int = 99) -> dict[str, float]:
    """Share of reconstructed scenes of `colours` the evaluator reads right, per attribute.

    `vae_folder` is a folder holding the VAE's config and weights (e.g. `models/kiln-shapes/vae`)."""
    from worker.models import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_folder, torch_dtype=torch.float32)
    combos = list(itertools.product(data.SHAPES, colours, data.SIZES, data.POSITIONS, data.BACKGROUNDS))
    scenes = data.sample_scenes(n, seed=seed, combinations=combos)
    x = torch.from_numpy(data.to_tensor_range(data.draw_batch(scenes)))
    recon = torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in x.split(64)])
    images = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return evaluate.score(scenes, images, palette=data.PALETTE)
