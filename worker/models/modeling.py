"""`ModelMixin`: a torch module built from a Diffusers `config.json` and loaded in place.

Loading builds the module on the meta device (no memory, no random init), reads the checkpoint
tensor by tensor in the target dtype, checks keys and shapes, and assigns the tensors into the
module (`load_state_dict(assign=True)`), so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, TypeVar

import torch

from worker.configuration import ConfigMixin
from worker.models.hub import resolve_model_folder
from worker.models.weights import check_state_dict, find_weight_files, read_state_dict, save_state_dict

logger = logging.getLogger(__name__)

M = TypeVar("M", bound="ModelMixin")

# Legacy attention names (old UNet2D / VAE checkpoints) -> current names, per attention module.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class ModelMixin(torch.nn.Module, ConfigMixin):
    """Base of every Kiln model: config, Diffusers-layout loading and saving, dtype/device."""

    config_name = "config.json"

    @classmethod
    def from_pretrained(
        cls: type[M],
        path_or_repo: str | os.PathLike[str],
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        revision: str | None = None,
    ) -> M:
        """Build the model from `config.json` and load its weights (eval mode).

        Args:
            path_or_repo: a local model folder, or a Hub repo id (fetched through the cache).
            subfolder: the component folder inside it (`"unet"`, `"vae"`).
            torch_dtype: dtype of floating weights; None loads float32 (fp16 files are upcast).
            variant: weights variant such as `"fp16"`; a folder without it falls back to plain weights.
            revision: Hub revision (branch, tag or commit) for a repo id.
        """
        folder = resolve_model_folder(path_or_repo, subfolder=subfolder, revision=revision)
        config = cls.load_config(folder)
        with torch.device("meta"):
            model = cls.from_config(config)
        files = find_weight_files(folder, variant)
        state_dict = read_state_dict(files, dtype=torch_dtype or torch.float32)
        model.load_weights(state_dict, source=", ".join(str(p) for p in files.paths))
        logger.info("loaded %s from %s (%d tensors)", cls.__name__, folder, len(state_dict))
        return model.eval()

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
        self, save_directory: str | os.PathLike[str], variant: str | None = None,
        max_shard_bytes: int | None = None,
    ) -> Path:
        """Write `config.json` and `diffusion_pytorch_model[.variant].safetensors` (Diffusers layout)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        save_state_dict(self.state_dict(), folder, variant=variant, max_shard_bytes=max_shard_bytes)
        return folder

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating parameter (float32 for a model without any)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


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
