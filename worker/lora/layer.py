"""LoRA-aware `nn.Linear` and `nn.Conv2d` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models"), batched per row as in Punica / S-LoRA (Chen et al. 2023; Sheng et al. 2023).

For an adapter with down-projection A (r, in[, k, k]), up-projection B (out, r[, 1, 1]) and
scaling α/r, a row x of the batch gets

    y = W x + b + Σ_{a ∈ adapters(row)} weight_a · scale · (α_a / r_a) · B_a A_a x

The base output W x + b is computed once for the whole batch. A linear layer then adds every row's
delta in one batched matmul pair whatever the mix (Punica's "BGMV"): each distinct adapter set of
the call is a slot whose A is its adapters' A stacked along the rank and whose B is their
weighted, α/r-scaled B side by side (zero-padded to the largest total rank; the empty set is all
zeros), built once per mix of adapter sets and reused by every step of a batch; each row gathers
its slot. On narrow float32 layers, where a rank-r delta is a large share of the layer's work (a
quarter to a half at widths 32–64), a routed call instead runs each row through its slot's merged
weight W + ΔW_slot in one `bmm` (see `LoraLinear._merges`) — no more arithmetic than the base
layer. Slot tensors depend only on the mix of adapter sets, not on the order of the rows (which
the batcher changes from step to step), and each layer keeps those of its last few mixes.
Otherwise (convolutions, or no routing) each adapter gets one grouped matmul over only the rows
that use it (gather, A then B, scatter-add). Rows with no adapter add nothing. Which rows use
which adapters comes from `worker.lora.routing` (per call); without a routing context every row
uses the layer's own active set (`set_active`).

The layers are subclasses of the layer they replace and share its Parameters, so state-dict keys,
`isinstance` checks and attributes (`in_features`, `kernel_size`, ...) are unchanged; adapter
tensors are non-persistent buffers (moved by `.to()`, never saved with the model).
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from worker.lora.errors import LoraError
from worker.lora.routing import AdapterRows, Group, current_rows, current_scale


class LoraWeights(nn.Module):
    """One adapter's tensors for one layer: down A (r, in[, k, k]), up B (out, r[, 1, 1]), α."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, alpha: float | None = None):
        super().__init__()
        self.register_buffer("down", down, persistent=False)
        self.register_buffer("up", up, persistent=False)
        self.rank = int(down.shape[0])
        self.alpha = float(self.rank if alpha is None else alpha)

    @property
    def scaling(self) -> float:
        """α / r: PEFT's and kohya's normalisation of the low-rank product."""
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        """(α/r) · B A, shaped like the base weight (out, in[, k, k]), in float32."""
        up, down = self.up.float().flatten(1), self.down.float()
        return self.scaling * (up @ down.flatten(1)).view(up.shape[0], *down.shape[1:])


# Routed linear layers run on per-slot merged weights when all slots' copies hold at most this many
# elements (1 MiB in float32), rows have at least this many tokens, and the deltas would cost at
# least 1/MERGE_MIN_DELTA_SHARE of the layer's multiply-adds; see `LoraLinear._merges`.
MERGE_MAX_ELEMENTS = 1 << 18
MERGE_MIN_TOKENS = 16
MERGE_MIN_DELTA_SHARE = 8
# Per-slot tensors kept per layer: one entry per mix of adapter sets (a round of calls with two
# resolutions, or two groups of jobs, alternates between two mixes).
SLOT_CACHE_ENTRIES = 2


class LoraLayerMixin:
    """Adapter bookkeeping and the batched forward shared by `LoraLinear` and `LoraConv2d`."""

    def _init_lora(self, base: nn.Module) -> None:
        self.lora = nn.ModuleDict()  # adapter name -> LoraWeights
        self.active: dict[str, float] = {}  # adapter name -> weight, used without a routing context
        self.enabled = True
        self.fused: dict[str, float] = {}  # adapter name -> factor fused into the weight
        self.__dict__["_base_module"] = base  # not a submodule: returned by `unwrap`
        self.__dict__["_original_weight"] = None
        self.__dict__["_version"] = 0  # bumped when adapters change: stale slot stacks are rebuilt
        # Per-slot tensors of the last few mixes of adapter sets (`SLOT_CACHE_ENTRIES`), by key:
        # ("stacks", slots, version) -> A (S, r, in), B (S, out, r); ("merged", ...) -> W + ΔW (S, out, in).
        self.__dict__["_slot_cache"] = collections.OrderedDict()

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, weights: LoraWeights) -> None:
        expected = self._down_shape(weights.rank)
        if tuple(weights.down.shape) != expected or tuple(weights.up.shape) != self._up_shape(weights.rank):
            raise LoraError(
                f"adapter {name!r}: lora_A {tuple(weights.down.shape)} / lora_B {tuple(weights.up.shape)} do not "
                f"fit a layer with weight {tuple(self.weight.shape)} (expected {expected} / {self._up_shape(weights.rank)})"
            )
        self.lora[name] = weights.to(self.weight.device, self.weight.dtype)  # inactive until set_active
        self.__dict__["_version"] += 1

    def remove_adapter(self, name: str) -> None:
        if name in self.fused:
            raise LoraError(f"adapter {name!r} is fused into the weights; call unfuse_lora first")
        self.active.pop(name, None)
        if name in self.lora:
            del self.lora[name]
            self.__dict__["_version"] += 1

    def set_active(self, weights: dict[str, float]) -> None:
        """Adapters (and weights) every row uses when no routing context is set; unknown names skipped."""
        self.active = {name: float(w) for name, w in weights.items() if name in self.lora}

    # ------------------------------------------------------------------ fusing
    def fuse(self, factors: dict[str, float]) -> None:
        """W ← W + Σ factor_a · (α/r) B_a A_a for the named adapters; the original W is kept for `unfuse`."""
        if self._original_weight is None:
            self.__dict__["_original_weight"] = self.weight.detach().clone()
        with torch.no_grad():
            for name, factor in factors.items():
                if name in self.lora and name not in self.fused:  # fusing twice would add it twice
                    delta = self.lora[name].delta_weight().to(self.weight.device) * factor
                    self.weight.add_(delta.to(self.weight.dtype))
                    self.fused[name] = factor

    def unfuse(self) -> None:
        """Restore the exact weight from before the first `fuse`."""
        if self._original_weight is not None:
            with torch.no_grad():
                self.weight.copy_(self._original_weight)
        self.__dict__["_original_weight"] = None
        self.fused.clear()

    def unwrap(self) -> nn.Module:
        """The plain layer this one replaced, holding the current (possibly fused) Parameters."""
        base = self._base_module
        base.weight, base.bias = self.weight, self.bias
        return base.train(self.training)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = current_scale()
        rows = current_rows()
        if rows is not None and self._slotted and not self.fused:
            return self._slotted_forward(x, rows, scale)
        out = self._base_forward(x)
        for group in self._groups(x.shape[0], x.device):
            out = self._add_group(out, x, group, scale)
        return out

    def _groups(self, batch: int, device: torch.device) -> list[Group]:
        rows = current_rows()
        if rows is not None:
            if self.fused:
                raise LoraError("per-row adapters cannot run on a model with fused LoRA weights; call unfuse_lora")
            return [g for g in rows.groups(batch, device) if g.name in self.lora]
        if not self.enabled or self.fused:  # as PEFT: once anything is fused, no adapter is added on top
            return []
        return [Group(name, None, weight) for name, weight in self.active.items()]

    def _add_group(self, out: torch.Tensor, x: torch.Tensor, group: Group, scale: float) -> torch.Tensor:
        """out[rows] += weight · scale · (α/r) · B A x[rows]  (rows: all, a contiguous run, or indices)."""
        weights = self.lora[group.name]
        rows = group.rows
        xs = x if rows is None else x[rows] if isinstance(rows, slice) else x.index_select(0, rows)  # (n_a, ...)
        delta = self._delta(xs.to(weights.down.dtype), weights).to(out.dtype)
        factor = weights.scaling * scale
        if isinstance(group.weight, torch.Tensor):  # a weight per row: (n_a,) -> (n_a, 1, ..., 1)
            delta = delta * group.weight.to(delta.dtype).view(-1, *([1] * (delta.ndim - 1)))
        else:
            factor *= group.weight
        if rows is None:
            return out.add_(delta, alpha=factor)
        if isinstance(rows, slice):
            out[rows].add_(delta, alpha=factor)
            return out
        return out.index_add_(0, rows, delta, alpha=factor)


class LoraLinear(LoraLayerMixin, nn.Linear):
    """`nn.Linear` plus per-row LoRA deltas: x (N, ..., in) -> (N, ..., out)."""

    _slotted = True  # routed calls add every row's delta in one batched matmul pair

    def _slotted_forward(self, x: torch.Tensor, rows: AdapterRows, scale: float) -> torch.Tensor:
        """A routed call: each row through its slot's merged weight when that is cheaper, else the
        base output for the whole batch plus every row's delta."""
        stacks = self._slot_stacks(rows)
        if stacks is None:  # no slot uses an adapter of this layer
            return self._base_forward(x)
        n = x.shape[0]
        tokens = x[0].numel() // self.in_features if n else 0
        if self._merges(len(rows.slots), stacks[0].shape[1], tokens):
            merged = self._cached(("merged", rows.slots, self._version, scale, self.weight._version,
                                   self.weight.data_ptr()), lambda: self._merge(stacks, scale))
            weight = merged.index_select(0, rows.slot_index(n, x.device))  # (N, out, in)
            y = torch.bmm(x.reshape(n, tokens, self.in_features), weight.transpose(1, 2))
            if self.bias is not None:
                y = y.add_(self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        return self._add_slots(self._base_forward(x), x, rows, stacks, scale)

    def _merges(self, slots: int, rank: int, tokens: int) -> bool:
        """Whether a routed call runs on per-slot merged weights W + ΔW instead of adding deltas.

        A rank-r delta costs r·(in + out) multiply-adds per token against the base's in·out: a
        quarter to a half on 32–64-wide layers, a few percent on an SD-sized one. A merged slot
        costs nothing extra per token but holds a weight copy per slot and gathers one per row, so
        it is taken only where the deltas would cost at least 1/`MERGE_MIN_DELTA_SHARE` of the
        layer, the slot copies are small (`MERGE_MAX_ELEMENTS`), rows have at least
        `MERGE_MIN_TOKENS` tokens (the gather is then a small share of the matmul), and the layer is
        float32 (in half precision W + ΔW rounds differently from W x + ΔW x)."""
        inputs, outputs = self.in_features, self.out_features
        return (self.weight.dtype == torch.float32 and tokens >= MERGE_MIN_TOKENS
                and slots * inputs * outputs <= MERGE_MAX_ELEMENTS
                and MERGE_MIN_DELTA_SHARE * rank * (inputs + outputs) >= inputs * outputs)

    def _merge(self, stacks: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
        """(S, out, in): the base weight plus `scale` times each slot's weighted deltas."""
        down, up = stacks
        return torch.baddbmm(self.weight.detach().expand(down.shape[0], -1, -1), up, down, alpha=scale)

    def _add_slots(self, out: torch.Tensor, x: torch.Tensor, rows: AdapterRows,
                   stacks: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
        """out[n] += scale · B_slot(n) A_slot(n) x[n] for every row n, in two `bmm`s."""
        down, up = stacks
        slot = rows.slot_index(x.shape[0], x.device)
        n = x.shape[0]
        xs = x.reshape(n, -1, self.in_features).to(down.dtype)  # (N, L, in)
        h = torch.bmm(xs, down.index_select(0, slot).transpose(1, 2))  # (N, L, r)
        delta = torch.bmm(h, up.index_select(0, slot).transpose(1, 2))  # (N, L, out)
        return out.add_(delta.view(out.shape).to(out.dtype), alpha=scale)

    def _slot_stacks(self, rows: AdapterRows) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A (S, r, in) and weighted, α/r-scaled B (S, out, r) of each slot, zero-padded to the
        largest total rank r; None when no slot uses an adapter of this layer."""
        key = ("stacks", rows.slots, self._version, self.weight.device, self.weight.dtype)  # .to() moves weights
        return self._cached(key, lambda: self._stack(rows.slots))

    def _stack(self, slot_sets: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
        slots = [[(self.lora[name], weight) for name, weight in slot if name in self.lora] for slot in slot_sets]
        rank = max((sum(w.rank for w, _ in slot) for slot in slots), default=0)
        if not rank:
            return None
        down = self.weight.new_zeros(len(slots), rank, self.in_features)
        up = self.weight.new_zeros(len(slots), self.out_features, rank)
        for s, slot in enumerate(slots):
            start = 0
            for weights, weight in slot:
                end = start + weights.rank
                down[s, start:end] = weights.down
                up[s, :, start:end] = weights.up * (weight * weights.scaling)
                start = end
        return down, up

    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The value for `key` from this layer's small LRU of per-slot tensors, built on a miss."""
        cache = self._slot_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = build()
        while len(cache) > 2 * SLOT_CACHE_ENTRIES:  # stacks and merged weights of each mix
            cache.popitem(last=False)
        return value

    @classmethod
    def wrap(cls, base: nn.Linear) -> LoraLinear:
        with torch.device("meta"):  # no new weights allocated: the base's Parameters are reused
            layer = cls(base.in_features, base.out_features, bias=base.bias is not None)
        layer.weight, layer.bias = base.weight, base.bias
        layer._init_lora(base)
        return layer.train(base.training)

    def _down_shape(self, r: int) -> tuple[int, ...]:
        return (r, self.in_features)

    def _up_shape(self, r: int) -> tuple[int, ...]:
        return (self.out_features, r)

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _delta(self, x: torch.Tensor, weights: LoraWeights) -> torch.Tensor:
        return F.linear(F.linear(x, weights.down), weights.up)


class LoraConv2d(LoraLayerMixin, nn.Conv2d):
    """`nn.Conv2d` plus per-row LoRA deltas: A is a conv with the base's kernel, stride and padding,
    B a 1×1 conv (kohya LoCon / PEFT). x (N, C, H, W) -> (N, C', H', W')."""

    _slotted = False  # one grouped conv pair per adapter

    @classmethod
    def wrap(cls, base: nn.Conv2d) -> LoraConv2d:
        if base.groups != 1:
            raise LoraError(f"LoRA on grouped convolutions (groups={base.groups}) is not supported")
        with torch.device("meta"):
            layer = cls(base.in_channels, base.out_channels, base.kernel_size, base.stride, base.padding,
                        base.dilation, base.groups, base.bias is not None, base.padding_mode)
        layer.weight, layer.bias = base.weight, base.bias
        layer._init_lora(base)
        return layer.train(base.training)

    def _down_shape(self, r: int) -> tuple[int, ...]:
        return (r, self.in_channels, *self.kernel_size)

    def _up_shape(self, r: int) -> tuple[int, ...]:
        return (self.out_channels, r, 1, 1)

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)

    def _delta(self, x: torch.Tensor, weights: LoraWeights) -> torch.Tensor:
        return F.conv2d(self._conv_forward(x, weights.down, None), weights.up)


# Layer types LoRA can adapt -> their LoRA-aware replacement.
LORA_LAYERS: dict[type[nn.Module], type[LoraLayerMixin]] = {nn.Linear: LoraLinear, nn.Conv2d: LoraConv2d}


def lora_class_for(module: nn.Module) -> type[LoraLayerMixin] | None:
    """The replacement class for `module` (exact type first, then subclasses), None if unsupported."""
    if isinstance(module, LoraLayerMixin):
        return type(module)
    found = LORA_LAYERS.get(type(module))
    return found or next((cls for base, cls in LORA_LAYERS.items() if isinstance(module, base)), None)
