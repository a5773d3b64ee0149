"""Finding, reading and checking Diffusers weight files.

A model folder holds its weights in one of these shapes (DIFFUSERS-FORMAT.md):

- ``diffusion_pytorch_model[.<variant>].safetensors``: one file;
- ``diffusion_pytorch_model.safetensors.index[.<variant>].json`` + the shards it names
  (``diffusion_pytorch_model[.<variant>]-00001-of-00002.safetensors``);
- the same two shapes with ``.bin`` (a torch pickle), read only with ``weights_only=True``.

Safetensors win over pickles; a requested variant wins over plain weights, and a folder with no
file for that variant falls back to its plain weights with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from worker.models.errors import ModelLoadError

logger = logging.getLogger(__name__)


class WeightsNotFoundError(ModelLoadError, OSError):
    """A model folder has no weight file of the requested kind (an `OSError`, as in Diffusers)."""

WEIGHTS_STEM = "diffusion_pytorch_model"
FORMATS = ("safetensors", "bin")  # in order of preference
_LISTED_KEYS = 8  # how many offending keys an error message names


@dataclass(frozen=True)
class WeightFiles:
    """The files that together hold one model's state dict."""

    paths: tuple[Path, ...]
    fmt: str  # "safetensors" | "bin"
    variant: str | None


def weight_file_names(fmt: str, variant: str | None, stem: str = WEIGHTS_STEM) -> tuple[str, str]:
    """Return (single file name, shard index name) for a format and an optional variant."""
    if variant:
        return f"{stem}.{variant}.{fmt}", f"{stem}.{fmt}.index.{variant}.json"
    return f"{stem}.{fmt}", f"{stem}.{fmt}.index.json"


def shard_file_name(index: int, total: int, variant: str | None, stem: str = WEIGHTS_STEM,
                    fmt: str = "safetensors") -> str:
    """Name of shard `index` (1-based) of `total`, as Diffusers writes it."""
    middle = f".{variant}" if variant else ""
    return f"{stem}{middle}-{index:05d}-of-{total:05d}.{fmt}"


def find_weight_files(folder: Path, variant: str | None = None,
                      use_safetensors: bool | None = None) -> WeightFiles:
    """Pick the weight files of `folder`, preferring `variant` and safetensors.

    Args:
        use_safetensors: None prefers safetensors and falls back to pickles; True accepts only
            safetensors; False prefers pickles (and still takes safetensors when there are none).

    Raises:
        WeightsNotFoundError: the folder holds no weights in an accepted shape.
    """
    formats = {None: FORMATS, True: ("safetensors",), False: ("bin", "safetensors")}[use_safetensors]
    if variant:
        found = _find_in(folder, variant, formats)
        if found is not None:
            return found
        logger.warning("%s has no %r variant weights; loading its plain weights", folder, variant)
    found = _find_in(folder, None, formats)
    if found is None:
        raise WeightsNotFoundError(_no_weights_message(folder, variant, formats))
    return found


def _no_weights_message(folder: Path, variant: str | None, formats: tuple[str, ...]) -> str:
    """What was looked for and what is there; it opens with Diffusers' sentence ("Error no file
    named diffusion_pytorch_model.bin found in directory ...", naming the last format tried), which
    Diffusers code matches on, and says which variant to ask for when only variant files exist."""
    expected = [name for fmt in formats for name in weight_file_names(fmt, variant)]
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    variants = sorted({name.split(".")[1].split("-")[0] for name in present
                       if name.startswith(f"{WEIGHTS_STEM}.") and name.count(".") >= 2
                       and name.split(".")[1].split("-")[0] not in FORMATS})
    hint = f"; it holds variant weights ({', '.join(variants)}): pass variant={variants[0]!r}" if variants else ""
    return (f"Error no file named {weight_file_names(formats[-1], None)[0]} found in directory {folder}: "
            f"no weights in it (looked for {expected}; found {present}{hint})")


def _find_in(folder: Path, variant: str | None, formats: tuple[str, ...] = FORMATS) -> WeightFiles | None:
    for fmt in formats:
        single, index = weight_file_names(fmt, variant)
        if (folder / single).is_file():
            return WeightFiles((folder / single,), fmt, variant)
        if (folder / index).is_file():
            return WeightFiles(_shards_of(folder / index), fmt, variant)
    return None


def _shards_of(index_path: Path) -> tuple[Path, ...]:
    """Shard paths named by an index json `{"weight_map": {key: shard file}}`."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{index_path} is not a shard index with a weight_map: {exc}") from exc
    shards = tuple(index_path.parent / name for name in sorted(set(weight_map.values())))
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{index_path} names shards that are not in the folder: {missing}")
    return shards


def read_state_dict(files: WeightFiles, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of `files`, casting floating ones to `dtype` one at a time.

    Casting tensor by tensor keeps peak memory near one copy of the weights.
    """
    state_dict: dict[str, torch.Tensor] = {}
    for path in files.paths:
        reader = _read_safetensors if files.fmt == "safetensors" else _read_pickle
        for key, tensor in reader(path):
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            state_dict[key] = tensor
    return state_dict


def _read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt, "
            "delete it and download it again"
        ) from exc


def _read_pickle(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Read a torch pickle with `weights_only=True`: tensors and plain containers, no code."""
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # only old (non-zip) pickles cannot be memory-mapped
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad pickles
        raise ModelLoadError(
            f"{path} cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    yield from loaded.items()


def check_state_dict(
    expected: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise `ModelLoadError` naming missing, unexpected and wrongly shaped keys."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k])
    )
    problems = [
        f"{label} ({len(keys)}): {_listed(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("wrong shapes", wrong))
        if keys
    ]
    if problems:
        raise ModelLoadError(f"weights from {source} do not fit the model; " + "; ".join(problems))


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    more = len(keys) - _LISTED_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    folder: Path,
    variant: str | None = None,
    max_shard_bytes: int | None = None,
    fmt: str = "safetensors",
) -> list[Path]:
    """Write weights as safetensors (or a torch pickle, `fmt="bin"`), sharded with an index when
    over `max_shard_bytes`. Weight files of the same variant left by an earlier save are removed."""
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    single, index_name = weight_file_names(fmt, variant)
    _remove_stale_weights(folder, variant)
    shards = _split_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        _WRITERS[fmt](tensors, folder / single)
        return [folder / single]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = folder / shard_file_name(i, len(shards), variant, fmt=fmt)
        _WRITERS[fmt](shard, path)
        weight_map.update({key: path.name for key in shard})
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / index_name).write_text(json.dumps(index, indent=2) + "\n")
    return paths + [folder / index_name]


def _split_shards(
    tensors: Mapping[str, torch.Tensor], max_shard_bytes: int | None
) -> list[dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than the limit gets a shard of its own."""
    if max_shard_bytes is None:
        return [dict(tensors)]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def parse_shard_size(size: int | str | None) -> int | None:
    """Bytes from an int or a string such as "10GB", "5MiB", "200kB" (decimal and binary units)."""
    if size is None or isinstance(size, int):
        return size
    text = str(size).strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, factor in units.items():  # longest units first
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"max_shard_size {size!r} is not a size: give bytes or a string like '10GB' or '500MiB'")


def _remove_stale_weights(folder: Path, variant: str | None) -> None:
    """Delete weight files of this variant from a previous save (their shards would be mixed in)."""
    middle = f".{variant}" if variant else ""
    for fmt in FORMATS:
        single, index = weight_file_names(fmt, variant)
        stale = [folder / single, folder / index, *folder.glob(f"{WEIGHTS_STEM}{middle}-*-of-*.{fmt}")]
        for path in stale:
            if path.is_file():
                path.unlink()


_WRITERS = {
    "safetensors": lambda tensors, path: save_file(tensors, str(path), metadata={"format": "pt"}),
    "bin": lambda tensors, path: torch.save(tensors, path),
}
