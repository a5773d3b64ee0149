"""LoRA adapters: loading (Diffusers/PEFT and kohya files), the per-row batched LoRA layer, and
Diffusers' pipeline API (`LoraLoaderMixin`).

Serving many adapters in one batched call:

    with adapter_rows([{"style-a": 1.0}, {}, {"style-b": 0.8, "style-c": 0.5}]):
        unet(...)       # row i adds the deltas of its own adapters; row 1 is the base model
"""

from worker.lora.errors import LoraError
from worker.lora.layer import LoraConv2d, LoraLinear, LoraWeights
from worker.lora.mixin import LoraLoaderMixin, scaled_by
from worker.lora.routing import AdapterRows, adapter_rows, current_rows, current_scale, lora_scale

__all__ = [
    "AdapterRows", "LoraConv2d", "LoraError", "LoraLinear", "LoraLoaderMixin", "LoraWeights", "adapter_rows",
    "current_rows", "current_scale", "lora_scale", "scaled_by",
]
