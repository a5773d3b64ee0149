"""Low-cost previews of a running job: its current latents as a small image, no VAE call.

Pixel-space models (DDPM) already denoise images: the preview is the current sample. Latent
models get a linear latent → RGB projection, the standard cheap approximation for the SD 1.x/2.x
VAE's four latent channels (a fixed 4×3 matrix fitted to that VAE); other channel counts show
their first three channels, normalised.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

# RGB contribution of each of the 4 SD latent channels (rows), for latents already divided by nothing:
# preview ≈ latents (B, 4, h, w) · M (4, 3), in [-1, 1].
SD_LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])


def preview_image(latents: torch.Tensor, pixel_space: bool) -> Image.Image:
    """The first sample of `latents` (B, C, h, w) as an RGB image."""
    x = latents[0].detach().float().cpu()
    if pixel_space:
        rgb = x[:3]
    elif x.shape[0] == 4:
        rgb = torch.einsum("chw,cr->rhw", x, SD_LATENT_RGB)
    else:
        rgb = x[:3]
        rgb = (rgb - rgb.mean()) / (rgb.std() + 1e-6) * 0.5
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
