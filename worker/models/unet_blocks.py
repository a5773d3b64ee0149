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

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from worker.models.attention import SpatialSelfAttention
from worker.models.errors import ModelConfigError
from worker.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
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

    def resnet(self, in_channels: int, out_channels: int) -> ResnetBlock2D:
        return ResnetBlock2D(in_channels, out_channels, self.temb_channels, groups=self.groups, eps=self.eps,
                             act_fn=self.act_fn, time_embedding_norm=self.time_scale_shift,
                             output_scale_factor=self.output_scale_factor, dropout=self.dropout)


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


class Level(nn.Module):
    """What every level shares: `gradient_checkpointing`, which recomputes each layer's
    activations in the backward pass (training only; set through the model's
    `enable_gradient_checkpointing`)."""

    attention: str | None = None  # the attention kind of the named subclasses below

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def run(self, layer: nn.Module, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


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
            self.downsamplers = nn.ModuleList([Downsample2D(out, out, padding=spec.downsample_padding)])

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = self.run(resnet, h, temb)
            if self.attentions is not None:
                h = self.run(self.attentions[i], h, context, context_mask)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
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
        self.upsamplers = nn.ModuleList([Upsample2D(out, out)]) if spec.add_sample else None

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
            h = self.upsamplers[0](h, upsample_size)
        return h

    def _freeu(self, h: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FreeU on the first two up levels: scale half the backbone channels by b, damp the
        skip's lowest frequencies by s; unchanged when FreeU is off."""
        factors = {0: (self.b1, self.s1), 1: (self.b2, self.s2)}.get(self.resolution_idx)
        if factors is None or None in (self.s1, self.s2, self.b1, self.b2):
            return h, skip
        return freeu(h, skip, *factors)


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
# fixes the attention kind and whether the level takes skips.
def _named(base: type[Level], name: str, attention: str | None = None, **attrs: Any) -> type[Level]:
    cls = type(name, (base,), {"attention": attention, "__module__": __name__, "__qualname__": name, **attrs})
    globals()[name] = cls  # importable by name, so pickled models load back
    return cls


DOWN_BLOCKS: dict[str, Callable[[BlockSpec], nn.Module]] = {
    "DownBlock2D": _named(DownBlock, "DownBlock2D"),
    "AttnDownBlock2D": _named(DownBlock, "AttnDownBlock2D", "self"),
    "CrossAttnDownBlock2D": _named(DownBlock, "CrossAttnDownBlock2D", "cross"),
    "DownEncoderBlock2D": _named(DownBlock, "DownEncoderBlock2D"),
    "AttnDownEncoderBlock2D": _named(DownBlock, "AttnDownEncoderBlock2D", "self"),
}

MID_BLOCKS: dict[str, Callable[[BlockSpec], nn.Module]] = {
    "UNetMidBlock2D": _named(MidBlock, "UNetMidBlock2D", "self"),
    "UNetMidBlock2DCrossAttn": _named(MidBlock, "UNetMidBlock2DCrossAttn", "cross"),
}

UP_BLOCKS: dict[str, Callable[[BlockSpec], nn.Module]] = {
    "UpBlock2D": _named(UpBlock, "UpBlock2D"),
    "AttnUpBlock2D": _named(UpBlock, "AttnUpBlock2D", "self"),
    "CrossAttnUpBlock2D": _named(UpBlock, "CrossAttnUpBlock2D", "cross"),
    "UpDecoderBlock2D": _named(UpBlock, "UpDecoderBlock2D", takes_skips=False),
    "AttnUpDecoderBlock2D": _named(UpBlock, "AttnUpDecoderBlock2D", "self", takes_skips=False),
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


def down_levels(spec: BlockSpec, names: Sequence[str], channels: Sequence[int],
                per_level: Sequence[dict[str, Any]] | None = None) -> list[nn.Module]:
    """Down levels: level i maps channels[i-1] (channels[0] for the first) to channels[i] and
    halves the size, except the last. `per_level[i]` overrides spec fields for level i."""
    blocks = []
    for i, name in enumerate(names):
        fields = dict(in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
                      add_sample=i < len(channels) - 1)
        level = replace(spec, **{**fields, **(per_level[i] if per_level is not None else {})})
        blocks.append(build_block(DOWN_BLOCKS, "down", name, level))
    return blocks


def up_levels(spec: BlockSpec, names: Sequence[str], channels: Sequence[int],
              per_level: Sequence[dict[str, Any]] | None = None) -> list[nn.Module]:
    """Up levels mirror the down path (deepest first). Level i outputs reversed(channels)[i];
    its last resnet takes the skip of the level below's input width. `per_level[i]` (in up order)
    overrides spec fields, typically `num_layers` = down layers + 1 (one more skip per level:
    the downsampler's output)."""
    rev = list(reversed(channels))
    blocks = []
    for i, name in enumerate(names):
        fields = dict(in_channels=rev[min(i + 1, len(rev) - 1)], out_channels=rev[i],
                      prev_output_channels=rev[max(i - 1, 0)], add_sample=i < len(rev) - 1)
        level = replace(spec, **{**fields, **(per_level[i] if per_level is not None else {})})
        blocks.append(build_block(UP_BLOCKS, "up", name, level))
        blocks[-1].resolution_idx = i
    return blocks


def check_resample_type(key: str, value: str | None) -> None:
    """Only conv resamplers are built; resnet-based ones are rejected clearly."""
    if value not in (None, "conv"):
        raise ModelConfigError(f"{key}={value!r} is not supported; only 'conv' is")
