"""Residual block with timestep conditioning, and the 2x down/up samplers between UNet levels.

The residual block is the pre-norm "BigGAN-style" block of DDPM (Ho et al., 2020, App. B):
GroupNorm -> act -> conv3x3 -> (+ time projection) -> GroupNorm -> act -> conv3x3, plus a
(1x1-projected) skip. `scale_shift` conditioning is the adaptive GroupNorm of "Improved DDPM"
(Nichol & Dhariwal, 2021): norm(h) * (1 + scale) + shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.activations import activate, get_activation
from worker.models.errors import ModelConfigError

TIME_SCALE_SHIFTS = ("default", "scale_shift")


class ResnetBlock2D(nn.Module):
    """(B, in, H, W) + temb (B, temb_channels) -> (B, out, H, W).

    Args:
        temb_channels: width of the time embedding; None for unconditioned blocks (VAE).
        time_embedding_norm: "default" adds the projected embedding before norm2;
            "scale_shift" projects to 2*out and modulates norm2's output.
        output_scale_factor: the sum (skip + residual) is divided by it.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6,
                 act_fn: str = "silu", time_embedding_norm: str = "default",
                 output_scale_factor: float = 1.0, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        if time_embedding_norm not in TIME_SCALE_SHIFTS:
            raise ModelConfigError(
                f"resnet_time_scale_shift {time_embedding_norm!r} is not supported; use one of {TIME_SCALE_SHIFTS}"
            )
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            proj_out = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, proj_out)
        self.norm2 = nn.GroupNorm(groups_out or groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # Without autograd, elementwise steps reuse the fresh buffers they get (fewer allocations).
        inplace = not torch.is_grad_enabled()
        h = self.conv1(activate(self.nonlinearity, self.norm1(x), inplace))
        if self.time_emb_proj is not None and temb is not None:
            temb = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]  # (B, C', 1, 1)
        else:
            temb = None
        if self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError("a scale_shift resnet block needs a time embedding")
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        elif temb is not None:
            h = self.norm2(h.add_(temb) if inplace else h + temb)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(activate(self.nonlinearity, h, inplace)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = h.add_(skip) if inplace else h + skip
        if self.output_scale_factor != 1.0:
            out = out.div_(self.output_scale_factor) if inplace else out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, out, ceil(H/2), ceil(W/2)).

    With `padding=0` (the VAE encoder) the input is padded asymmetrically (right/bottom by 1)
    before the unpadded conv, as in the original LDM autoencoder.
    """

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to `output_size`) then 3x3 conv: (B, C, H, W) -> (B, out, 2H, 2W)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if x.shape[0] >= 64:  # nearest-neighbour upsampling of large channels-last batches needs contiguity
            x = x.contiguous()
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)
