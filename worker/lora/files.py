"""Reading and writing LoRA weight files: a state dict, a file, a folder or a Hub repo."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from worker.lora.errors import LoraError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # Diffusers' default file name
LORA_WEIGHT_NAME_BIN = "pytorch_lora_weights.bin"
METADATA_KEY = "lora_adapter_metadata"  # safetensors metadata entry holding per-component adapter configs

Source = str | os.PathLike | Mapping[str, torch.Tensor]


def read_lora(source: Source, weight_name: str | None = None, **hub: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, adapter metadata) from a state dict, a weight file, a folder or a Hub repo id.

    Args:
        source: tensors by key, a `.safetensors`/`.bin` file, a folder, or a Hub repo id.
        weight_name: the file inside a folder or repo (default `pytorch_lora_weights.safetensors`,
            or the folder's only `.safetensors` file).
        hub: `revision`, `token`, `cache_dir`, `subfolder` for Hub downloads.
    """
    if isinstance(source, Mapping):
        return dict(source), {}
    path = Path(source)
    if path.is_dir():
        path = path / (hub.get("subfolder") or "") / (weight_name or _default_weight_name(path))
    elif not path.is_file():
        path = _download(str(source), weight_name or LORA_WEIGHT_NAME, hub)
    if not path.is_file():
        raise LoraError(f"no LoRA weight file at {path}")
    return _read_file(path)


def _default_weight_name(folder: Path) -> str:
    if (folder / LORA_WEIGHT_NAME).is_file():
        return LORA_WEIGHT_NAME
    found = sorted(p.name for p in folder.glob("*.safetensors")) or sorted(p.name for p in folder.glob("*.bin"))
    if len(found) != 1:
        raise LoraError(f"{folder} holds {found or 'no weight files'}; pass weight_name= to choose one")
    return found[0]


def _download(repo_id: str, filename: str, hub: Mapping[str, Any]) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, **{k: v for k, v in hub.items() if v is not None}))
    except Exception as exc:  # huggingface_hub raises many types (offline, 404, bad id)
        raise LoraError(f"cannot fetch LoRA {filename!r} from {repo_id!r}: {exc}") from exc


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        return _read_tensors(path)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as exc:  # corrupt, truncated, not a weight file
        raise LoraError(f"cannot read LoRA weights from {path}: {exc}") from exc


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            raw = (f.metadata() or {}).get(METADATA_KEY)
        return tensors, json.loads(raw) if raw else {}
    return torch.load(path, map_location="cpu", weights_only=True), {}


def write_lora(state_dict: Mapping[str, torch.Tensor], save_directory: str | os.PathLike,
               weight_name: str | None = None, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors (contiguous, CPU) as safetensors, adapter configs in the metadata; returns the path."""
    folder = Path(save_directory)
    if folder.is_file():
        raise LoraError(f"{folder} is a file; save_lora_weights needs a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (weight_name or LORA_WEIGHT_NAME)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    header = {"format": "pt"}
    if metadata:
        header[METADATA_KEY] = json.dumps(dict(metadata), indent=2, sort_keys=True, default=list)
    save_file(tensors, str(path), metadata=header)
    return path
