"""Time Kiln's UNet and VAE against diffusers' on the same weights, in one process.

    .venv/bin/python bench/bench_models.py [--repeats 3] [--channels-last] [--device cpu]

Cases: SD 1.5 UNet architecture (random weights) at 32x32 latents, batch 2, 77 text tokens;
SD VAE decode of 32x32 latents to 256x256 pixels. Diffusers initialises the weights once and
Kiln's model takes the very same tensors. Calls alternate (ours, theirs, ours, ...) after one
warm-up each, so drifting machine load hits both sides alike; the table reports the median.
Prints a markdown table; ratio < 1 means Kiln is faster.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Callable

import torch

import diffusers
from worker.models import AutoencoderKL, UNet2DConditionModel

logger = logging.getLogger("bench_models")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8,
)
SD_VAE = dict(
    latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def alternate(ours: Callable[[], object], theirs: Callable[[], object], repeats: int,
              device: torch.device) -> tuple[list[float], list[float]]:
    """Warm both up once, then time them alternately `repeats` times each."""
    ours()
    theirs()
    ours_times, their_times = [], []
    for _ in range(repeats):
        ours_times.append(_time(ours, device))
        their_times.append(_time(theirs, device))
    return ours_times, their_times


def _share_weights(ours_cls, reference: torch.nn.Module) -> torch.nn.Module:
    """Build ours on the meta device and give it the reference's tensors (no copy)."""
    with torch.device("meta"):
        ours = ours_cls.from_config(reference.config)
    ours.load_weights(reference.state_dict())
    return ours.eval()


def _prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool):
    model = model.to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def unet_case(args, device: torch.device, dtype: torch.dtype) -> tuple[list[float], list[float]]:
    reference = diffusers.UNet2DConditionModel(**SD15_UNET).eval()
    ours = _prepare(_share_weights(UNet2DConditionModel, reference), device, dtype, args.channels_last)
    reference = _prepare(reference, device, dtype, args.channels_last)
    size = args.latent_size
    sample = torch.randn(args.batch, 4, size, size, device=device, dtype=dtype)
    if args.channels_last:
        sample = sample.to(memory_format=torch.channels_last)
    timesteps = torch.tensor([999, 500][: args.batch] + [1] * max(0, args.batch - 2), device=device)
    context = torch.randn(args.batch, 77, 768, device=device, dtype=dtype)
    return alternate(lambda: ours(sample, timesteps, context), lambda: reference(sample, timesteps, context),
                     args.repeats, device)


def vae_case(args, device: torch.device, dtype: torch.dtype) -> tuple[list[float], list[float]]:
    reference = diffusers.AutoencoderKL(**SD_VAE).eval()
    ours = _prepare(_share_weights(AutoencoderKL, reference), device, dtype, args.channels_last)
    reference = _prepare(reference, device, dtype, args.channels_last)
    size = args.image_size // 8
    latents = torch.randn(1, 4, size, size, device=device, dtype=dtype)
    if args.channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    return alternate(lambda: ours.decode(latents), lambda: reference.decode(latents), args.repeats, device)


def _row(name: str, ours: list[float], theirs: list[float]) -> str:
    mine, other = statistics.median(ours), statistics.median(theirs)
    spread = f"{min(ours):.3f}-{max(ours):.3f} / {min(theirs):.3f}-{max(theirs):.3f}"
    return f"| {name} | {mine:.3f} | {other:.3f} | {mine / other:.3f} | {spread} |"


def print_table(args, rows: list[str]) -> None:
    """The Kiln-vs-diffusers table with the run's device, dtype, versions and repeats above it."""
    header = [f"device {args.device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"diffusers {diffusers.__version__}, median of {args.repeats}", "",
              "| case | Kiln s | diffusers s | ratio | range Kiln / diffusers |", "|---|---|---|---|---|"]
    print("\n".join(header + rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true", help="both models and inputs in NHWC")
    parser.add_argument("--only", choices=["unet", "vae"], help="run one case")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    layout = "channels-last" if args.channels_last else "contiguous"
    rows = []
    with torch.inference_mode():
        if args.only in (None, "unet"):
            name = f"SD1.5 UNet, {args.batch}x4x{args.latent_size}x{args.latent_size}, {layout}"
            rows.append(_row(name, *unet_case(args, device, dtype)))
        if args.only in (None, "vae"):
            name = f"SD VAE decode, 1x3x{args.image_size}x{args.image_size}, {layout}"
            rows.append(_row(name, *vae_case(args, device, dtype)))
    print_table(args, rows)


if __name__ == "__main__":
    main()
