"""Time Kiln's FLUX and SD3 transformers against diffusers' on the same weights, in one process.

    .venv/bin/python bench/bench_transformers.py [--repeats 3] [--tokens 256] [--text-tokens 64]

Full widths with reduced depth, random weights: FLUX.1 (24 heads x 128, T5 4096, pooled 768,
`--flux-layers` double + `--flux-single-layers` single blocks, guidance embedding) and SD3.5-large
(38 heads x 64, `--sd3-layers` blocks, RMS q/k norm). Image tokens: `--tokens` (a square latent
grid), text tokens `--text-tokens`, batch `--batch` with one timestep per row. Diffusers
initialises the weights and Kiln's model takes the very same tensors; calls alternate after a
warm-up each (see bench_models.py). Prints a markdown table; ratio < 1 means Kiln is faster.
"""

from __future__ import annotations

import argparse
import math

import torch

import diffusers
from bench_models import _row, _share_weights, alternate, print_table
from worker.models import FluxTransformer2DModel, SD3Transformer2DModel

FLUX = dict(patch_size=1, in_channels=64, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, attention_head_dim=64, num_attention_heads=38,
                  joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
                  pos_embed_max_size=192, qk_norm="rms_norm")


def _grid(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise SystemExit(f"--tokens must be a square number (a square latent grid); got {tokens}")
    return side


def flux_case(args, device: torch.device, dtype: torch.dtype) -> tuple[list[float], list[float]]:
    config = dict(FLUX, num_layers=args.flux_layers, num_single_layers=args.flux_single_layers)
    reference = diffusers.FluxTransformer2DModel(**config).eval()
    ours = _share_weights(FluxTransformer2DModel, reference).to(device, dtype)
    reference = reference.to(device, dtype)
    side, B = _grid(args.tokens), args.batch
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    inputs = dict(
        hidden_states=torch.randn(B, args.tokens, 64, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(B, args.text_tokens, 4096, device=device, dtype=dtype),
        pooled_projections=torch.randn(B, 768, device=device, dtype=dtype),
        timestep=torch.linspace(1.0, 0.1, B, device=device), guidance=torch.full((B,), 3.5, device=device),
        img_ids=torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float().to(device),
        txt_ids=torch.zeros(args.text_tokens, 3, device=device),
    )
    return alternate(lambda: ours(**inputs), lambda: reference(**inputs), args.repeats, device)


def sd3_case(args, device: torch.device, dtype: torch.dtype) -> tuple[list[float], list[float]]:
    reference = diffusers.SD3Transformer2DModel(**dict(SD35_LARGE, num_layers=args.sd3_layers)).eval()
    ours = _share_weights(SD3Transformer2DModel, reference).to(device, dtype)
    reference = reference.to(device, dtype)
    side, B = _grid(args.tokens) * 2, args.batch  # patch size 2: latents are twice the token grid
    inputs = dict(
        hidden_states=torch.randn(B, 16, side, side, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(B, args.text_tokens, 4096, device=device, dtype=dtype),
        pooled_projections=torch.randn(B, 2048, device=device, dtype=dtype),
        timestep=torch.linspace(1000.0, 100.0, B, device=device),
    )
    return alternate(lambda: ours(**inputs), lambda: reference(**inputs), args.repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=256, help="image tokens, a square number")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--flux-layers", type=int, default=1)
    parser.add_argument("--flux-single-layers", type=int, default=1)
    parser.add_argument("--sd3-layers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--only", choices=["flux", "sd3"], help="run one case")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = []
    shape = f"batch {args.batch}, {args.tokens} image + {args.text_tokens} text tokens"
    with torch.inference_mode():
        if args.only in (None, "flux"):
            name = f"FLUX.1 width, {args.flux_layers}+{args.flux_single_layers} blocks, {shape}"
            rows.append(_row(name, *flux_case(args, device, dtype)))
        if args.only in (None, "sd3"):
            name = f"SD3.5-large width, {args.sd3_layers} blocks, {shape}"
            rows.append(_row(name, *sd3_case(args, device, dtype)))
    print_table(args, rows)


if __name__ == "__main__":
    main()
