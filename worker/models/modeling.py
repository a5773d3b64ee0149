"""`ModelMixin`: a torch module built from a Diffusers `config.json` and loaded in place.

Loading builds the module on the meta device (no memory, no random init), reads the checkpoint
tensor by tensor in the target dtype, checks keys and shapes, and assigns the tensors into the
module (`load_state_dict(assign=True)`), so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch

from worker.models.errors import ModelLoadError
from worker.models.layerwise_casting import DEFAULT_SKIP_PATTERNS, apply_layerwise_casting
from worker.models.weights import (check_state_dict, find_weight_files, parse_shard_size, read_state_dict,
                                   save_state_dict)
from worker.runtime.configuration import ConfigMixin
from worker.runtime.hub import MissingFilesError, resolve_model_folder

logger = logging.getLogger(__name__)

M = TypeVar("M", bound="ModelMixin")

# Legacy attention names (old UNet2D / VAE checkpoints) -> current names, per attention module.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class ModelMixin(torch.nn.Module, ConfigMixin):
    """Base of every Kiln model: config, Diffusers-layout loading and saving, dtype/device,
    gradient checkpointing and the attention-processor switches of Diffusers' `ModelMixin`."""

    config_name = "config.json"
    main_input_name = "sample"
    _supports_gradient_checkpointing = True
    # Submodule names (any dotted component of a parameter's name) that stay float32 on load.
    _keep_in_fp32_modules: list[str] | None = None
    _no_split_modules: list[str] | None = None
    # Diffusers' marker of constructor keywords kept only for old configs: Kiln's models have none.
    _deprecated_kwargs: list[str] = []
    # Module-name patterns that `enable_layerwise_casting` leaves in their dtype (besides the defaults).
    _skip_layerwise_casting_patterns: list[str] | None = None

    @classmethod
    def from_pretrained(
        cls: type[M],
        path_or_repo: str | os.PathLike[str],
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        revision: str | None = None,
        *,
        use_safetensors: bool | None = None,
        output_loading_info: bool = False,
        low_cpu_mem_usage: bool = True,
        device_map: str | torch.device | None = None,
        **kwargs: Any,
    ) -> M | tuple[M, dict[str, list]]:
        """Build the model from `config.json` and load its weights (eval mode).

        Args:
            path_or_repo: a local model folder, or a Hub repo id (fetched through the cache).
            subfolder: the component folder inside it (`"unet"`, `"vae"`).
            torch_dtype: dtype of floating weights; None loads float32 (fp16 files are upcast).
                Modules named in `_keep_in_fp32_modules` stay float32.
            variant: weights variant such as `"fp16"`; a folder without it falls back to plain weights.
            revision: Hub revision (branch, tag or commit) for a repo id.
            use_safetensors: True accepts only safetensors, False prefers `.bin`, None prefers
                safetensors.
            output_loading_info: also return `{"missing_keys", "unexpected_keys",
                "mismatched_keys", "error_msgs"}` (always empty: a checkpoint that does not fit
                raises instead).
            low_cpu_mem_usage: accepted for compatibility; Kiln always loads in place.
            device_map: a single device (`"cpu"`, `"cuda"`, `"cuda:1"`) to put the model on.
            **kwargs: config keys that override `config.json` (`in_channels=9`), and Hub
                options Kiln handles through huggingface_hub's settings (`cache_dir`, `token`, ...).

        Raises:
            OSError: no config or no weights (`WeightsNotFoundError`).
            ModelLoadError: the weights do not fit the model.
        """
        overrides = _config_overrides(cls, kwargs)
        device = None if device_map is None else _single_device(device_map)  # checked before any loading
        try:
            folder = resolve_model_folder(path_or_repo, subfolder=subfolder, revision=revision, variant=variant)
        except MissingFilesError as exc:
            raise ModelLoadError(str(exc)) from exc
        config = {**cls.load_config(folder), **overrides}
        with torch.device("meta"):
            model = cls.from_config(config)
        files = find_weight_files(folder, variant, use_safetensors)
        dtype = torch_dtype or torch.float32
        raw = read_state_dict(files, dtype=None if model._keep_in_fp32_modules else dtype)
        state_dict = model._cast_for_load(raw, dtype)
        model.load_weights(state_dict, source=", ".join(str(p) for p in files.paths))
        logger.info("loaded %s from %s (%d tensors)", cls.__name__, folder, len(state_dict))
        if device is not None:
            model.to(device)
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    def _cast_for_load(self, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Cast floating tensors to `dtype` one at a time (float32 for `_keep_in_fp32_modules`)."""
        keep = set(self._keep_in_fp32_modules or ())
        for key, tensor in state_dict.items():
            if tensor.is_floating_point():
                target = torch.float32 if keep & set(key.split(".")) else dtype
                state_dict[key] = tensor.to(target)
        return state_dict

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], source: str = "a state dict") -> None:
        """Convert legacy names, check keys and shapes, then assign the tensors into the module.

        Raises:
            ModelLoadError: keys are missing or unexpected, or shapes differ; nothing is loaded.
        """
        state_dict = self.convert_legacy_state_dict(dict(state_dict))
        expected = {key: tensor.shape for key, tensor in self.state_dict().items()}
        check_state_dict(expected, state_dict, source)
        self.load_state_dict(state_dict, strict=True, assign=True)

    def convert_legacy_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-class hook: rename old checkpoint keys to this module's names.

        The default handles attention blocks that declare `legacy_attention_names = True`:
        `query/key/value/proj_attn` become `to_q/to_k/to_v/to_out.0`, and 1x1-conv-shaped
        projection weights (out, in, 1, 1) become linear (out, in).
        """
        for prefix, module in self.named_modules():
            if getattr(module, "legacy_attention_names", False):
                _rename_attention_keys(state_dict, f"{prefix}.")
        return state_dict

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        is_main_process: bool = True,
        save_function: Any = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = "10GB",
        push_to_hub: bool = False,
        max_shard_bytes: int | None = None,
        **kwargs: Any,
    ) -> Path:
        """Write `config.json` and `diffusion_pytorch_model[.variant].safetensors` (Diffusers layout).

        Args:
            safe_serialization: False writes `.bin` torch pickles instead of safetensors.
            max_shard_size: bytes or a size string ("10GB", "200KB"); larger state dicts are
                split into shards with an index file, named as Diffusers names them.
            is_main_process: False writes nothing (the other ranks of a distributed job).
            save_function, push_to_hub: not supported; Kiln never uploads (an error says so).
        """
        if push_to_hub or save_function is not None:
            raise ValueError("Kiln's save_pretrained writes local folders only (no push_to_hub / save_function)")
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory {folder} is a file; give a folder")
        if not is_main_process:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        limit = max_shard_bytes if max_shard_bytes is not None else parse_shard_size(max_shard_size)
        fmt = "safetensors" if safe_serialization else "bin"
        save_state_dict(self.state_dict(), folder, variant=variant, max_shard_bytes=limit, fmt=fmt)
        return folder

    def __getattr__(self, name: str) -> Any:
        """Submodules and parameters as torch finds them; then config keys, deprecated as in Diffusers
        (`unet.in_channels` works with a FutureWarning; write `unet.config.in_channels`)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            config = self.__dict__.get("_internal_config")
            if config is None or name not in config:
                raise
        warnings.warn(f"reading config key {name!r} as an attribute of {type(self).__name__} is deprecated; "
                      f"use .config.{name}", FutureWarning, stacklevel=2)
        return config[name]

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating parameter (float32 for a model without any); with layerwise
        casting on, the dtype layers compute in (what inputs should be cast to)."""
        compute = self.__dict__.get("_layerwise_compute_dtype")
        if compute is not None:
            return compute
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def enable_layerwise_casting(self, storage_dtype: torch.dtype = torch.float8_e4m3fn,
                                 compute_dtype: torch.dtype | None = None,
                                 skip_modules_pattern: tuple[str, ...] | None = None,
                                 skip_modules_classes: tuple[type, ...] | None = None,
                                 non_blocking: bool = False) -> None:
        """Keep Linear/Conv/Embedding weights in `storage_dtype` and compute each layer in
        `compute_dtype` (default: the model's dtype now), as Diffusers' method does.

        Layers named by `skip_modules_pattern` (default: norms, positional/patch embeddings,
        `proj_in`/`proj_out`), by `_keep_in_fp32_modules` or `_skip_layerwise_casting_patterns`
        keep their dtype. `non_blocking` is accepted; casts are synchronous.
        """
        patterns = tuple(skip_modules_pattern or DEFAULT_SKIP_PATTERNS)
        patterns += tuple(self._keep_in_fp32_modules or ()) + tuple(self._skip_layerwise_casting_patterns or ())
        compute_dtype = compute_dtype or self.dtype
        apply_layerwise_casting(self, storage_dtype, compute_dtype, patterns, tuple(skip_modules_classes or ()))
        self._layerwise_compute_dtype = compute_dtype

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (only those with `requires_grad` when `only_trainable`)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)} \
            if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in skip)

    # ------------------------------------------------------------------ training switches
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Any = None) -> None:
        """Recompute each block's activations in the backward pass instead of storing them.

        Affects training only (with autograd on); `gradient_checkpointing_func` is accepted for
        compatibility and must be None or `torch.utils.checkpoint.checkpoint`.
        """
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, enable: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enable

    # ------------------------------------------------------------------ attention processors
    @property
    def attn_processors(self) -> dict[str, Any]:
        """`"<module path>.processor"` -> processor, for every attention layer."""
        return {f"{name}.processor": m.processor for name, m in self.named_modules() if hasattr(m, "set_processor")}

    def set_attn_processor(self, processor: Any) -> None:
        """One processor for every attention layer, or a dict keyed like `attn_processors`.

        Raises:
            ValueError: a dict that does not name every attention layer.
        """
        layers = {f"{name}.processor": m for name, m in self.named_modules() if hasattr(m, "set_processor")}
        if isinstance(processor, dict):
            if set(processor) != set(layers):
                raise ValueError(f"a dict of processors must name all {len(layers)} attention layers "
                                 f"(keys as in attn_processors); got {len(processor)}")
            for key, module in layers.items():
                module.set_processor(processor[key])
            return
        for module in layers.values():
            module.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Back to the plain (non-fused, non-SDPA) processor, as Diffusers' method does."""
        from worker.models.attention import AttnProcessor

        self.set_attn_processor(AttnProcessor())

    def fuse_qkv_projections(self) -> None:
        """Compute q/k/v (self-attention) or k/v (cross-attention) with one matmul each layer.

        Same outputs up to float rounding; `unfuse_qkv_projections` drops the fused weights.
        """
        for module in self.modules():
            if hasattr(module, "fuse_projections"):
                module.fuse_projections()

    # Memory-saving attention switches of Diffusers: Kiln attends with torch's SDPA kernels, which
    # never materialise the score matrix, so these are accepted and change nothing.
    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        self._xformers_requested = True

    def disable_xformers_memory_efficient_attention(self) -> None:
        self._xformers_requested = False

    def set_attention_slice(self, slice_size: str | int | list[int] | None) -> None:
        self._attention_slice_size = slice_size

    def unfuse_qkv_projections(self) -> None:
        for module in self.modules():
            if hasattr(module, "unfuse_projections"):
                module.unfuse_projections()


# from_pretrained options that huggingface_hub's settings (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE) or
# Kiln's in-place loading already cover; accepted so Diffusers code runs unchanged.
HUB_OPTIONS = frozenset({
    "cache_dir", "token", "use_auth_token", "local_files_only", "force_download", "proxies", "resume_download",
    "ignore_mismatched_sizes", "max_memory", "offload_folder", "offload_state_dict", "from_flax", "mirror",
    "disable_mmap", "keep_in_fp32_modules", "quantization_config", "dduf_entries", "low_cpu_mem_usage",
})


def _config_overrides(cls: type[ModelMixin], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Split `from_pretrained`'s extra keyword arguments: config overrides are returned."""
    known = cls._init_parameters()
    unknown = sorted(k for k in kwargs if k not in known and k not in HUB_OPTIONS)
    if unknown:
        raise TypeError(f"{cls.__name__}.from_pretrained got unknown arguments {unknown}; "
                        f"config keys it takes: {sorted(known)}")
    ignored = sorted(k for k in kwargs if k in HUB_OPTIONS and k not in known)
    if ignored:
        logger.debug("%s.from_pretrained ignores %s (hub settings / in-place loading)", cls.__name__, ignored)
    return {k: v for k, v in kwargs.items() if k in known}


def _single_device(device_map: str | int | torch.device) -> torch.device:
    """The one device a `device_map` names: a device, a device name, or a CUDA index.

    Raises:
        ValueError: a negative index, a string that names no device, or a placement plan
            ("auto", a dict, ...), which Kiln does not split models by. The first two messages
            carry Diffusers' wording, which callers match on.
    """
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        if device_map < 0:
            raise ValueError(f"You can't pass device_map as a negative int ({device_map}); give a CUDA index >= 0")
        return torch.device("cuda", device_map)
    if isinstance(device_map, str) and device_map not in PLACEMENT_PLANS:
        try:
            return torch.device(device_map)
        except RuntimeError:
            raise ValueError(f"When passing device_map as a string, the value needs to be a device name "
                             f"such as 'cpu', 'cuda' or 'cuda:1'; got {device_map!r}") from None
    if isinstance(device_map, torch.device):
        return device_map
    raise ValueError(f"device_map {device_map!r} is not supported; give one device such as 'cpu' or 'cuda'")


# device_map values that ask for a model split over devices (Accelerate's plans).
PLACEMENT_PLANS = frozenset({"auto", "balanced", "balanced_low_0", "sequential"})


def _rename_attention_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    for old, new in LEGACY_ATTENTION_NAMES.items():
        for suffix in ("weight", "bias"):
            key = f"{prefix}{old}.{suffix}"
            if key in state_dict:
                state_dict[f"{prefix}{new}.{suffix}"] = state_dict.pop(key)
    for name in ("to_q", "to_k", "to_v", "to_out.0"):
        key = f"{prefix}{name}.weight"
        weight = state_dict.get(key)
        if weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1):
            state_dict[key] = weight[:, :, 0, 0]  # (out, in, 1, 1) conv -> (out, in) linear
