"""Find a pipeline's files: a local folder, or a Hub repo through huggingface_hub's cache.

A Diffusers pipeline repo holds far more than one load needs (every weight variant, pickles,
Flax and ONNX exports). `plan_files` picks, from a listing of the repo, exactly the files to
fetch: `model_index.json`, each wanted component's JSON/text files, and per component the
weights of the requested variant (falling back to the plain weights, with a warning), preferring
safetensors over pickles. `fetch_pipeline_files` then resolves that plan:

1. a local folder is used in place;
2. a Hub repo whose cached snapshot already satisfies the plan is used with no network;
3. otherwise (unless offline) the repo is listed and `snapshot_download` fetches only the plan.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"

# `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`, `model.safetensors`, `pytorch_model.bin`
_WEIGHT_RE = re.compile(
    r"^[^.]+(?:\.(?P<variant>[^.]+?))?(?:-\d+-of-\d+)?\.(?P<ext>safetensors|bin)$"
)
# `diffusion_pytorch_model.safetensors.index.fp16.json`
_INDEX_RE = re.compile(r"^[^.]+\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>[^.]+))?\.json$")
# Files a component may need besides weights: configs, tokenizer vocabularies and merges.
_SIDE_FILE_PATTERNS = ("*.json", "*.txt", "*.model")


class PipelineFilesError(FileNotFoundError):
    """A pipeline's files are missing, incomplete, or cannot be fetched."""


@dataclass(frozen=True)
class ComponentFiles:
    """The files chosen for one component folder.

    Attributes:
        name: folder (and component) name, e.g. `unet`.
        variant: variant to load with (`fp16`), or None for the plain weights.
        weights: chosen weight files, relative to the pipeline root.
    """

    name: str
    variant: str | None
    weights: tuple[str, ...]


@dataclass(frozen=True)
class FilePlan:
    """What to fetch for one load: allow patterns plus the per-component choices."""

    components: dict[str, ComponentFiles]
    patterns: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()  # components that lack the requested variant


@dataclass(frozen=True)
class PipelineFiles:
    """A resolved pipeline: its folder on disk, its parsed index and the file plan."""

    folder: Path
    model_index: dict[str, Any]
    plan: FilePlan
    repo_id: str | None = None  # set when the files came from the Hub


def _weight_info(filename: str) -> tuple[str | None, str] | None:
    """(variant, extension) of a weight or weight-index file name, or None if it is neither."""
    for pattern in (_WEIGHT_RE, _INDEX_RE):
        match = pattern.match(filename)
        if match:
            return match.group("variant"), match.group("ext")
    return None


def _choose_weights(files: list[str], variant: str | None) -> tuple[str | None, list[str]]:
    """Pick one variant and one format among a component folder's weight files.

    Returns (variant used or None, chosen file names). safetensors wins over `.bin`.
    """
    infos = {f: info for f in files if (info := _weight_info(f)) is not None}
    wanted = [f for f, (v, _) in infos.items() if v == variant] if variant else []
    used = variant if wanted else None
    if not wanted:
        wanted = [f for f, (v, _) in infos.items() if v is None]
    safetensors = [f for f in wanted if infos[f][1] == "safetensors"]
    return used, sorted(safetensors or wanted)


def _files_by_folder(files: Iterable[str]) -> dict[str, list[str]]:
    folders: dict[str, list[str]] = {}
    for path in files:
        head, _, tail = path.replace("\\", "/").partition("/")
        if tail and "/" not in tail:
            folders.setdefault(head, []).append(tail)
    return folders


def plan_files(
    files: Iterable[str],
    components: Mapping[str, bool],
    variant: str | None = None,
    extra_patterns: Iterable[str] = (),
) -> FilePlan:
    """Choose the files to fetch from a repo listing.

    Args:
        files: every file of the repo, as paths relative to its root (`unet/config.json`).
        components: folder name -> whether that component needs weights (models do,
            schedulers and tokenizers do not).
        variant: weight variant such as `fp16`; components without it fall back to plain weights.
        extra_patterns: more root-level patterns to fetch (a custom pipeline's `.py` file).

    Raises:
        PipelineFilesError: a component folder or its weights are missing, or no component has
            the requested variant.
    """
    folders = _files_by_folder(files)
    chosen: dict[str, ComponentFiles] = {}
    fallbacks: list[str] = []
    for name, needs_weights in components.items():
        listing = folders.get(name)
        if not listing:
            raise PipelineFilesError(f"component folder {name!r}/ is missing or empty")
        used, weights = _choose_weights(listing, variant)
        if needs_weights and not weights:
            raise PipelineFilesError(_no_weights_message(name, listing))
        if needs_weights and variant and used is None:
            fallbacks.append(name)
        chosen[name] = ComponentFiles(name, used, tuple(f"{name}/{w}" for w in weights))
    _check_variant(chosen, components, variant, fallbacks)
    patterns = [MODEL_INDEX, *extra_patterns]
    for name, comp in chosen.items():
        patterns += [f"{name}/{p}" for p in _SIDE_FILE_PATTERNS] + list(comp.weights)
    return FilePlan(chosen, tuple(patterns), tuple(fallbacks))


def _no_weights_message(name: str, listing: list[str]) -> str:
    variants = sorted({v for f in listing if (info := _weight_info(f)) and (v := info[0])})
    hint = f"; it has variants {variants}: pass variant=..." if variants else ""
    return (
        f"component {name!r} has no weights: expected *.safetensors or *.bin files in {name}/ "
        f"(found {sorted(listing)}){hint}"
    )


def _check_variant(chosen, components, variant, fallbacks) -> None:
    weighted = [name for name, needs in components.items() if needs]
    if variant and weighted and len(fallbacks) == len(weighted):
        raise PipelineFilesError(
            f"no component has weights of variant {variant!r} (looked in {weighted}); "
            "pass variant=None to load the plain weights"
        )
    for name in fallbacks:
        logger.warning("component %r has no %r variant; loading its plain weights", name, variant)


def list_folder(folder: Path) -> list[str]:
    """Every file under `folder`, as POSIX paths relative to it (symlinks followed)."""
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def read_model_index(folder: Path) -> dict[str, Any]:
    """Parse `model_index.json` in `folder`, with an error that says what is wrong."""
    path = folder / MODEL_INDEX
    if not path.is_file():
        raise PipelineFilesError(f"{folder} has no {MODEL_INDEX}; is it a Diffusers pipeline folder?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineFilesError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "_class_name" not in data:
        raise PipelineFilesError(f"{path} must be a JSON object with a `_class_name`")
    return data


ComponentSelector = Callable[[dict[str, Any]], Mapping[str, bool]]


def fetch_pipeline_files(
    repo_id_or_path: str | os.PathLike[str],
    select: ComponentSelector,
    *,
    variant: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    extra_patterns: Iterable[str] = (),
) -> PipelineFiles:
    """Resolve a pipeline folder, downloading only what `select` asks for.

    Args:
        repo_id_or_path: a local folder, or a Hub repo id (`org/name`).
        select: given the parsed `model_index.json`, returns folder name -> needs weights.
        variant, revision, token: as in `DiffusionPipeline.from_pretrained`.
        cache_dir: huggingface_hub cache; default `$HF_HUB_CACHE` or huggingface_hub's own.
        extra_patterns: more root-level files to fetch.
    """
    local = Path(repo_id_or_path).expanduser()
    if local.is_dir():
        index = read_model_index(local)
        plan = plan_files(list_folder(local), select(index), variant, extra_patterns)
        return PipelineFiles(local, index, plan)
    repo_id = str(repo_id_or_path)
    if os.path.isabs(repo_id) or repo_id.startswith(".") or repo_id.count("/") != 1:
        raise PipelineFilesError(
            f"{repo_id!r} is neither an existing folder nor a Hub repo id of the form 'org/name'"
        )
    return _fetch_from_hub(repo_id, select, variant, revision, token, cache_dir, tuple(extra_patterns))


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set (read now, not at import time)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _cached_snapshot(repo_id: str, revision: str | None, cache_dir: str) -> Path | None:
    """The cached snapshot folder for `revision`, or None if the cache has none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
    return Path(folder)


def _plan_cached(folder: Path, select, variant, extra_patterns) -> PipelineFiles | None:
    """Use a cached snapshot if it holds everything the plan needs."""
    try:
        index = read_model_index(folder)
        plan = plan_files(list_folder(folder), select(index), variant, extra_patterns)
    except PipelineFilesError as exc:
        logger.info("cached snapshot %s is incomplete: %s", folder, exc)
        return None
    missing_extra = [p for p in extra_patterns if not any(fnmatch.fnmatch(f, p) for f in list_folder(folder))]
    if plan.fallbacks or missing_extra:
        return None  # the remote may hold the variant (or file) that this cache lacks
    return PipelineFiles(folder, index, plan)


def _fetch_from_hub(repo_id, select, variant, revision, token, cache_dir, extra_patterns) -> PipelineFiles:
    cache = _cache_dir(cache_dir)
    snapshot = _cached_snapshot(repo_id, revision, cache)
    if snapshot is not None:
        cached = _plan_cached(snapshot, select, variant, extra_patterns)
        if cached is not None:
            logger.info("using cached snapshot of %s at %s", repo_id, snapshot)
            return PipelineFiles(cached.folder, cached.model_index, cached.plan, repo_id)
    if hub_offline():
        return _offline_result(repo_id, revision, snapshot, select, variant, extra_patterns)
    return _download(repo_id, select, variant, revision, token, cache, extra_patterns)


def _offline_result(repo_id, revision, snapshot, select, variant, extra_patterns) -> PipelineFiles:
    """Offline: a cached snapshot that lacks only a variant still loads (with fallback)."""
    where = f"{repo_id}@{revision or 'main'}"
    if snapshot is None:
        raise PipelineFilesError(
            f"{where} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it once with network access or unset HF_HUB_OFFLINE"
        )
    index = read_model_index(snapshot)
    plan = plan_files(list_folder(snapshot), select(index), variant, extra_patterns)
    return PipelineFiles(snapshot, index, plan, repo_id)


def _download(repo_id, select, variant, revision, token, cache, extra_patterns) -> PipelineFiles:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    try:
        index_path = hf_hub_download(
            repo_id, MODEL_INDEX, revision=revision, token=token, cache_dir=cache
        )
        files = HfApi().list_repo_files(repo_id, revision=revision, token=token)
    except Exception as exc:  # huggingface_hub raises many kinds; keep the cause attached
        raise PipelineFilesError(f"cannot fetch {repo_id}@{revision or 'main'} from the Hub: {exc}") from exc
    index = read_model_index(Path(index_path).parent)
    plan = plan_files(files, select(index), variant, extra_patterns)
    folder = snapshot_download(
        repo_id, revision=revision, token=token, cache_dir=cache, allow_patterns=list(plan.patterns)
    )
    return PipelineFiles(Path(folder), index, plan, repo_id)
