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
        up, down: resample x2 after the first norm/activation, on both paths (BigGAN-style
            resampling resnets); `kernel` picks how: None (nearest up / 2x2 average down),
            "fir" (FIR-filtered, NCSN++), "sde_vp" (nearest up / average down).
        use_in_shortcut: force (or forbid) the 1x1 shortcut conv; default: only when widths differ.
        skip_time_act: project the time embedding without activating it first.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6,
                 act_fn: str = "silu", time_embedding_norm: str = "default",
                 output_scale_factor: float = 1.0, dropout: float = 0.0, up: bool = False, down: bool = False,
                 kernel: str | None = None, use_in_shortcut: bool | None = None, skip_time_act: bool = False):
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
        self.skip_time_act = skip_time_act
        self.resample = _resampler(up, down, kernel)
        self.conv_shortcut = None
        if (in_channels != out_channels) if use_in_shortcut is None else use_in_shortcut:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # Without autograd, elementwise steps reuse the fresh buffers they get (fewer allocations).
        inplace = not torch.is_grad_enabled()
        h = activate(self.nonlinearity, self.norm1(x), inplace)
        if self.resample is not None:
            x, h = self.resample(x), self.resample(h)
        h = self.conv1(h)
        if self.time_emb_proj is not None and temb is not None:
            temb = temb if self.skip_time_act else self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]  # (B, C', 1, 1)
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


def _resampler(up: bool, down: bool, kernel: str | None):
    """The parameter-free x2 resampling of an up/down resnet (None for a plain one)."""
    if up and down:
        raise ModelConfigError("a resnet block resamples up or down, not both")
    if kernel not in (None, "fir", "sde_vp"):
        raise ModelConfigError(f"resnet resampling kernel {kernel!r} is not supported; use None, 'fir' or 'sde_vp'")
    if up:
        return fir_upsample if kernel == "fir" else _nearest_x2
    if down:
        return fir_downsample if kernel == "fir" else _average_x2
    return None


def _nearest_x2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x.contiguous() if x.shape[0] >= 64 else x, scale_factor=2.0, mode="nearest")


def _average_x2(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


# FIR resampling of NCSN++ (Song et al., 2021), after StyleGAN2 (Karras et al., 2020): the separable
# binomial filter [1, 3, 3, 1], normalised, applied by upfirdn2d (zero-insert, pad, filter, decimate).
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, (H·up + p0 + p1 − k + 1) / down, ...): upsample by zero insertion,
    pad every side by (p0 before, p1 after), correlate each channel with the flipped 2-D `kernel`
    (true convolution), keep every `down`-th sample."""
    B, C, H, W = x.shape
    if up > 1:
        spread = x.new_zeros(B, C, H * up, W * up)
        spread[..., ::up, ::up] = x
        x = spread
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x)[None, None].expand(C, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=C)[..., ::down, ::down]


def _fir_kernel(gain: float) -> torch.Tensor:
    taps = torch.tensor(FIR_TAPS, dtype=torch.float32)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum() * gain


def fir_upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """x2 FIR upsampling: (B, C, H, W) -> (B, C, 2H, 2W)."""
    p = len(FIR_TAPS) - factor
    return upfirdn2d(x, _fir_kernel(factor**2), up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """x2 FIR downsampling: (B, C, H, W) -> (B, C, H/2, W/2)."""
    p = len(FIR_TAPS) - factor
    return upfirdn2d(x, _fir_kernel(1.0), down=factor, pad=((p + 1) // 2, p // 2))


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
