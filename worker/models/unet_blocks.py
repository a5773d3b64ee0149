"""UNet levels (down, mid, up) built from the block type names of Diffusers configs.

Every level is a stack of `ResnetBlock2D`s, optionally each followed by an attention module,
optionally ending in a 2x resampler. The type name only chooses the attention kind and whether
the level takes skip connections, so one class per role serves all names; the registries below
map each name to its class and attention kind.

Attention kinds:
- "self": `SpatialSelfAttention` (UNet2D / VAE levels), heads = channels // head dim;
- "cross": `Transformer2DModel` (SD levels), `num_heads` heads of channels // num_heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from worker.models.attention import SpatialSelfAttention
from worker.models.errors import ModelConfigError
from worker.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D, fir_downsample, fir_upsample
from worker.models.transformer_2d import Transformer2DModel


@dataclass(frozen=True)
class BlockSpec:
    """Everything a level needs, filled in by the model from its config."""

    in_channels: int
    out_channels: int
    temb_channels: int | None
    num_layers: int
    add_sample: bool = False  # a down- or upsampler at the end of the level
    prev_output_channels: int | None = None  # up levels: channels coming from the level below
    eps: float = 1e-6
    act_fn: str = "silu"
    groups: int = 32
    time_scale_shift: str = "default"
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    downsample_padding: int = 1
    attention_head_dim: int | None = None  # "self" attention head size (None: one head)
    attention_norm: bool = True  # "self" attention: GroupNorm before attending
    attention_groups: int | None = None  # its groups (None: `groups`)
    num_heads: int = 8  # "cross" attention
    cross_attention_dim: int | None = None
    transformer_layers: int | Sequence[int] = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    add_attention: bool = True  # mid levels: False drops their attention (keeps the resnets)
    resample: str = "conv"  # how Attn* levels resample: "conv" (a strided/3x3 conv) or "resnet" (a resnet)

    def resnet(self, in_channels: int, out_channels: int, **extra: Any) -> ResnetBlock2D:
        return ResnetBlock2D(in_channels, out_channels, self.temb_channels, groups=self.groups, eps=self.eps,
                             act_fn=self.act_fn, time_embedding_norm=self.time_scale_shift,
                             output_scale_factor=self.output_scale_factor, dropout=self.dropout, **extra)


def _self_attention(spec: BlockSpec, channels: int, layer: int) -> nn.Module:
    groups = (spec.attention_groups or spec.groups) if spec.attention_norm else None
    return SpatialSelfAttention(channels, dim_head=spec.attention_head_dim or channels, norm_groups=groups,
                                eps=spec.eps, rescale_output_factor=spec.output_scale_factor)


def _cross_attention(spec: BlockSpec, channels: int, layer: int) -> nn.Module:
    if spec.cross_attention_dim is None:
        raise ModelConfigError("cross-attention blocks need cross_attention_dim in the config")
    layers = spec.transformer_layers
    depth = layers[layer] if isinstance(layers, (list, tuple)) else layers
    return Transformer2DModel(spec.num_heads, channels // spec.num_heads, channels, num_layers=depth,
                              cross_attention_dim=spec.cross_attention_dim, norm_num_groups=spec.groups,
                              use_linear_projection=spec.use_linear_projection,
                              only_cross_attention=spec.only_cross_attention, dropout=spec.dropout)


ATTENTION_KINDS: dict[str, Callable[[BlockSpec, int, int], nn.Module]] = {
    "self": _self_attention,
    "cross": _cross_attention,
}


def _layers(spec: BlockSpec, kind: str | None, widths: Sequence[tuple[int, int]],
            attention_first: bool = False) -> tuple[nn.ModuleList, nn.ModuleList | None]:
    """Resnets of the given (in, out) widths, each paired with an attention of kind `kind`.

    Modules are created pair by pair (resnet then its attention; `attention_first` for mid
    levels, whose first resnet stands alone), in the order the reference builds them, so that
    random initialisation under one seed gives the same weights.
    """
    attend = kind is not None and spec.add_attention
    resnets, attentions = [], []
    for i, (width_in, width_out) in enumerate(widths):
        if attention_first and attend and i > 0:
            attentions.append(ATTENTION_KINDS[kind](spec, width_out, i - 1))
        resnets.append(spec.resnet(width_in, width_out))
        if not attention_first and attend:
            attentions.append(ATTENTION_KINDS[kind](spec, width_out, i))
    return nn.ModuleList(resnets), (nn.ModuleList(attentions) if attend else None)


def run_checkpointed(owner: nn.Module, layer: nn.Module, *args: Any) -> Any:
    """layer(*args), recomputed in the backward pass when `owner`'s `gradient_checkpointing` is on
    and autograd records; a layer with its own switch on (a `Transformer2DModel`, a mid level inside
    a VAE encoder) checkpoints its parts itself and is called directly."""
    if getattr(owner, "gradient_checkpointing", False) and torch.is_grad_enabled() \
            and not getattr(layer, "gradient_checkpointing", False):
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


class Level(nn.Module):
    """What every level shares: `gradient_checkpointing`, which recomputes each layer's
    activations in the backward pass (training only; set through the model's
    `enable_gradient_checkpointing`). Levels that Diffusers builds without that switch (the NCSN++
    ones) have none here either, so code that lists the checkpointed modules finds the same ones."""

    attention: str | None = None  # the attention kind of the named subclasses below
    resample: str | None = "conv"  # "conv", "resnet", or None: as the config says (`BlockSpec.resample`)
    takes_image: bool = False  # NCSN++ levels also carry the (resampled) input image
    checkpointable: bool = True  # whether the level has the `gradient_checkpointing` switch

    def __init__(self) -> None:
        super().__init__()
        if self.checkpointable:
            self.gradient_checkpointing = False

    def resampler(self, spec: BlockSpec, channels: int, direction: str) -> nn.Module:
        """The x2 resampler ending the level: a conv (`Downsample2D` / `Upsample2D`) or a resnet block."""
        kind = self.resample or spec.resample
        if kind == "resnet":
            return spec.resnet(channels, channels, **{direction: True})
        if kind != "conv":
            raise ModelConfigError(f"{direction}sample_type {kind!r} is not supported; use 'conv' or 'resnet'")
        if direction == "down":
            return Downsample2D(channels, channels, padding=spec.downsample_padding)
        return Upsample2D(channels, channels)

    def resample_call(self, sampler: nn.Module, h: torch.Tensor, temb: torch.Tensor | None,
                      size: tuple[int, int] | None = None) -> torch.Tensor:
        if isinstance(sampler, ResnetBlock2D):
            return self.run(sampler, h, temb)
        return sampler(h) if size is None else sampler(h, size)

    def run(self, layer: nn.Module, *args: Any) -> torch.Tensor:
        return run_checkpointed(self, layer, *args)


class DownBlock(Level):
    """(B, in, H, W) -> (B, out, H/2, W/2) and the skip tensors the up path will consume."""

    def __init__(self, spec: BlockSpec, attention: str | None = None):
        super().__init__()
        attention = attention or self.attention
        out = spec.out_channels
        widths = [(spec.in_channels if i == 0 else out, out) for i in range(spec.num_layers)]
        self.resnets, self.attentions = _layers(spec, attention, widths)
        self.downsamplers = None
        if spec.add_sample:
            self.downsamplers = nn.ModuleList([self.resampler(spec, out, "down")])

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, intrablock: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`intrablock`: a T2I-Adapter residual, added after the last (resnet, attention) pair."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = self.run(resnet, h, temb)
            if self.attentions is not None:
                h = self.run(self.attentions[i], h, context, context_mask)
            if intrablock is not None and i == len(self.resnets) - 1:
                h = h + intrablock
            skips.append(h)
        if self.downsamplers is not None:
            h = self.resample_call(self.downsamplers[0], h, temb)
            skips.append(h)
        return h, tuple(skips)


class MidBlock(Level):
    """resnet, then `num_layers` x (attention, resnet), at constant channels and size."""

    def __init__(self, spec: BlockSpec, attention: str | None = None):
        super().__init__()
        attention = attention or self.attention
        channels = spec.in_channels
        widths = [(channels, channels)] * (spec.num_layers + 1)
        self.resnets, self.attentions = _layers(spec, attention, widths, attention_first=True)

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.run(self.resnets[0], h, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.attentions is not None:
                h = self.run(self.attentions[i], h, context, context_mask)
            h = self.run(resnet, h, temb)
        return h


class UpBlock(Level):
    """(B, prev, H, W) + skips -> (B, out, 2H, 2W).

    With `skips`, each resnet takes the running features concatenated (after them, on channels)
    with the latest unused skip tensor of the down path; decoder levels (`skips=False`) take none.
    """

    takes_skips = True

    def __init__(self, spec: BlockSpec, attention: str | None = None, skips: bool | None = None):
        super().__init__()
        attention = attention or self.attention
        skips = self.takes_skips if skips is None else skips
        out, n = spec.out_channels, spec.num_layers
        prev = spec.prev_output_channels if spec.prev_output_channels is not None else spec.in_channels
        if skips:
            widths = [(prev if i == 0 else out) + (spec.in_channels if i == n - 1 else out) for i in range(n)]
        else:
            widths = [spec.in_channels if i == 0 else out for i in range(n)]
        self.takes_skips = skips
        self.resolution_idx = 0  # position among the up levels (set by `up_levels`); FreeU uses it
        self.s1 = self.s2 = self.b1 = self.b2 = None  # FreeU factors (`UNet2DConditionModel.enable_freeu`)
        self.resnets, self.attentions = _layers(spec, attention, [(width, out) for width in widths])
        self.upsamplers = nn.ModuleList([self.resampler(spec, out, "up")]) if spec.add_sample else None

    def forward(self, h: torch.Tensor, skips: Sequence[torch.Tensor] = (), temb: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        skips = list(skips)
        for i, resnet in enumerate(self.resnets):
            if self.takes_skips:
                h, skip = self._freeu(h, skips.pop())
                h = torch.cat([h, skip], dim=1)
            h = self.run(resnet, h, temb)
            if self.attentions is not None:
                h = self.run(self.attentions[i], h, context, context_mask)
        if self.upsamplers is not None:
            h = self.resample_call(self.upsamplers[0], h, temb, upsample_size)
        return h

    def _freeu(self, h: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FreeU on the first two up levels: scale half the backbone channels by b, damp the
        skip's lowest frequencies by s; unchanged when FreeU is off."""
        factors = {0: (self.b1, self.s1), 1: (self.b2, self.s2)}.get(self.resolution_idx)
        if factors is None or None in (self.s1, self.s2, self.b1, self.b2):
            return h, skip
        return freeu(h, skip, *factors)


# ---------------------------------------------------------------- NCSN++ levels
# Song et al., 2021 ("Score-Based Generative Modeling through SDEs"), as Diffusers' UNet2DModel builds
# them: GroupNorm groups min(C/4, 32), outputs scaled by 1/sqrt(2), FIR resampling resnets, and the
# "input skip": the image travels down (FIR-downsampled, added through a 1x1 conv) and an "output skip"
# image is built up (FIR-upsampled, plus a 3x3 conv of each up level's features).
NCSN_SCALE = math.sqrt(2.0)


def _ncsn_resnet(spec: BlockSpec, in_channels: int, out_channels: int, groups: int | None = None,
                 **extra: Any) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels, out_channels, spec.temb_channels, groups=groups or min(in_channels // 4, 32),
                         groups_out=min(out_channels // 4, 32), eps=spec.eps, act_fn=spec.act_fn,
                         time_embedding_norm=spec.time_scale_shift, output_scale_factor=NCSN_SCALE,
                         dropout=spec.dropout, **extra)


def _ncsn_attention(spec: BlockSpec, channels: int) -> SpatialSelfAttention:
    return SpatialSelfAttention(channels, dim_head=spec.attention_head_dim or channels, norm_groups=32, eps=spec.eps,
                                rescale_output_factor=NCSN_SCALE)


class SkipDownBlock(Level):
    """(B, in, H, W) + image (B, 3, H, W) -> (B, out, H/2, W/2), skips, image (B, 3, H/2, W/2)."""

    takes_image = True
    checkpointable = False  # as in Diffusers, whose NCSN++ levels have no checkpointing

    def __init__(self, spec: BlockSpec):
        super().__init__()
        out, resnets, attentions = spec.out_channels, [], []
        for i in range(spec.num_layers):
            resnets.append(_ncsn_resnet(spec, spec.in_channels if i == 0 else out, out))
            if self.attention:
                attentions.append(_ncsn_attention(spec, out))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if self.attention else None
        self.resnet_down = self.skip_conv = None
        if spec.add_sample:
            self.resnet_down = _ncsn_resnet(spec, out, out, down=True, kernel="fir", use_in_shortcut=True)
            self.skip_conv = nn.Conv2d(3, out, kernel_size=1)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, image: torch.Tensor) -> tuple:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = self.run(resnet, h, temb)
            if self.attentions is not None:
                h = self.attentions[i](h)
            skips.append(h)
        if self.resnet_down is not None:
            h = self.run(self.resnet_down, h, temb)
            image = fir_downsample(image)
            h = self.skip_conv(image) + h
            skips.append(h)
        return h, tuple(skips), image


class SkipUpBlock(Level):
    """(B, prev, H, W) + skips + image (B, 3, H, W) or None -> (B, out, 2H, 2W), image (B, 3, 2H, 2W).

    The Attn variant attends once, after its last resnet; its resnets' GroupNorm groups keep the
    reference's rule min(prev + skip / 4, 32) (`legacy_groups`)."""

    takes_image = True
    checkpointable = False  # as in Diffusers, whose NCSN++ levels have no checkpointing
    legacy_groups = False

    def __init__(self, spec: BlockSpec):
        super().__init__()
        out, n = spec.out_channels, spec.num_layers
        prev = spec.prev_output_channels if spec.prev_output_channels is not None else spec.in_channels
        resnets = []
        for i in range(n):
            first, skip = (prev if i == 0 else out), (spec.in_channels if i == n - 1 else out)
            groups = min(first + skip // 4, 32) if self.legacy_groups else min((first + skip) // 4, 32)
            resnets.append(_ncsn_resnet(spec, first + skip, out, groups=groups))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList([_ncsn_attention(spec, out)]) if self.attention else None
        self.resnet_up = self.skip_conv = self.skip_norm = None
        if spec.add_sample:
            self.resnet_up = _ncsn_resnet(spec, out, out, groups=min(out // 4, 32), up=True, kernel="fir",
                                          use_in_shortcut=True)
            self.skip_conv = nn.Conv2d(out, 3, kernel_size=3, padding=1)
            self.skip_norm = nn.GroupNorm(min(out // 4, 32), out, eps=spec.eps, affine=True)

    def forward(self, h: torch.Tensor, skips: Sequence[torch.Tensor], temb: torch.Tensor,
                image: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        skips = list(skips)
        for resnet in self.resnets:
            h = self.run(resnet, torch.cat([h, skips.pop()], dim=1), temb)
        if self.attentions is not None:
            h = self.attentions[0](h)
        image = fir_upsample(image) if image is not None else 0
        if self.resnet_up is not None:
            image = image + self.skip_conv(F.silu(self.skip_norm(h)))
            h = self.run(self.resnet_up, h, temb)
        return h, image


def freeu(h: torch.Tensor, skip: torch.Tensor, b: float, s: float, threshold: int = 1) -> tuple[torch.Tensor, ...]:
    """FreeU (Si et al., 2023, "FreeU: Free Lunch in Diffusion U-Net").

    Backbone h (B, C, H, W): its first C/2 channels times b. Skip (B, C', H, W): its centred 2-D
    spectrum's (2·threshold)² lowest frequencies times s, back to the spatial domain (real part).
    """
    half = h.shape[1] // 2
    h = torch.cat([h[:, :half] * b, h[:, half:]], dim=1)
    spectrum = torch.fft.fftshift(torch.fft.fftn(skip.float(), dim=(-2, -1)), dim=(-2, -1))
    rows, cols = skip.shape[-2] // 2, skip.shape[-1] // 2
    mask = torch.ones(skip.shape, device=skip.device)
    mask[..., rows - threshold: rows + threshold, cols - threshold: cols + threshold] = s
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return h, filtered.to(skip.dtype)


# One class per Diffusers block name (so module class names read as in Diffusers); each only
# fixes the attention kind, whether the level takes skips, and whether it has the checkpointing
# switch (a VAE's levels have none: its Encoder / Decoder checkpoint them, as in Diffusers).
def _named(base: type[Level], name: str, attention: str | None = None, **attrs: Any) -> type[Level]:
    cls = type(name, (base,), {"attention": attention, "__module__": __name__, "__qualname__": name, **attrs})
    globals()[name] = cls  # importable by name, so pickled models load back
    return cls


DOWN_BLOCKS: dict[str, Callable[[BlockSpec], nn.Module]] = {
    "DownBlock2D": _named(DownBlock, "DownBlock2D"),
    "AttnDownBlock2D": _named(DownBlock, "AttnDownBlock2D", "self", resample=None),
    "ResnetDownsampleBlock2D": _named(DownBlock, "ResnetDownsampleBlock2D", resample="resnet"),
    "SkipDownBlock2D": _named(SkipDownBlock, "SkipDownBlock2D"),
    "AttnSkipDownBlock2D": _named(SkipDownBlock, "AttnSkipDownBlock2D", "self"),
    "CrossAttnDownBlock2D": _named(DownBlock, "CrossAttnDownBlock2D", "cross"),
    "DownEncoderBlock2D": _named(DownBlock, "DownEncoderBlock2D", checkpointable=False),
    "AttnDownEncoderBlock2D": _named(DownBlock, "AttnDownEncoderBlock2D", "self", checkpointable=False),
}

MID_BLOCKS: dict[str, Callable[[BlockSpec], nn.Module]] = {
    "UNetMidBlock2D": _named(MidBlock, "UNetMidBlock2D", "self"),
    "UNetMidBlock2DCrossAttn": _named(MidBlock, "UNetMidBlock2DCrossAttn", "cross"),
}

UP_BLOCKS: dict[str, Callable[[BlockSpec], nn.Module]] = {
    "UpBlock2D": _named(UpBlock, "UpBlock2D"),
    "AttnUpBlock2D": _named(UpBlock, "AttnUpBlock2D", "self", resample=None),
    "ResnetUpsampleBlock2D": _named(UpBlock, "ResnetUpsampleBlock2D", resample="resnet"),
    "SkipUpBlock2D": _named(SkipUpBlock, "SkipUpBlock2D"),
    "AttnSkipUpBlock2D": _named(SkipUpBlock, "AttnSkipUpBlock2D", "self", legacy_groups=True),
    "CrossAttnUpBlock2D": _named(UpBlock, "CrossAttnUpBlock2D", "cross"),
    "UpDecoderBlock2D": _named(UpBlock, "UpDecoderBlock2D", takes_skips=False, checkpointable=False),
    "AttnUpDecoderBlock2D": _named(UpBlock, "AttnUpDecoderBlock2D", "self", takes_skips=False,
                                     checkpointable=False),
}


def build_block(registry: dict[str, Callable[[BlockSpec], nn.Module]], kind: str, name: str,
                spec: BlockSpec) -> nn.Module:
    """Build the `kind` ("down", "mid", "up") block called `name` in configs.

    Raises:
        ModelConfigError: `name` is not in the registry; the message lists the known names.
    """
    if name not in registry:
        raise ModelConfigError(f"unknown {kind} block type {name!r}; known: {sorted(registry)}")
    return registry[name](spec)


def _registry(registry: dict[str, Callable[[BlockSpec], nn.Module]], with_image: bool) -> dict:
    """The registry, without the NCSN++ levels (which carry the input image) unless `with_image`."""
    return {k: v for k, v in registry.items() if with_image or not getattr(v, "takes_image", False)}


def down_levels(spec: BlockSpec, names: Sequence[str], channels: Sequence[int],
                per_level: Sequence[dict[str, Any]] | None = None, with_image: bool = True) -> list[nn.Module]:
    """Down levels: level i maps channels[i-1] (channels[0] for the first) to channels[i] and
    halves the size, except the last. `per_level[i]` overrides spec fields for level i;
    `with_image=False` refuses NCSN++ levels (models whose forward does not carry the image)."""
    registry = _registry(DOWN_BLOCKS, with_image)
    blocks = []
    for i, name in enumerate(names):
        fields = dict(in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
                      add_sample=i < len(channels) - 1)
        level = replace(spec, **{**fields, **(per_level[i] if per_level is not None else {})})
        blocks.append(build_block(registry, "down", name, level))
    return blocks


def up_levels(spec: BlockSpec, names: Sequence[str], channels: Sequence[int],
              per_level: Sequence[dict[str, Any]] | None = None, with_image: bool = True) -> list[nn.Module]:
    """Up levels mirror the down path (deepest first). Level i outputs reversed(channels)[i];
    its last resnet takes the skip of the level below's input width. `per_level[i]` (in up order)
    overrides spec fields, typically `num_layers` = down layers + 1 (one more skip per level:
    the downsampler's output)."""
    rev = list(reversed(channels))
    registry = _registry(UP_BLOCKS, with_image)
    blocks = []
    for i, name in enumerate(names):
        fields = dict(in_channels=rev[min(i + 1, len(rev) - 1)], out_channels=rev[i],
                      prev_output_channels=rev[max(i - 1, 0)], add_sample=i < len(rev) - 1)
        level = replace(spec, **{**fields, **(per_level[i] if per_level is not None else {})})
        blocks.append(build_block(registry, "up", name, level))
        blocks[-1].resolution_idx = i
    return blocks


def check_resample_type(key: str, value: str | None) -> None:
    """Levels resample with a conv or a resnet block."""
    if value not in (None, "conv", "resnet"):
        raise ModelConfigError(f"{key}={value!r} is not supported; use 'conv' or 'resnet'")
