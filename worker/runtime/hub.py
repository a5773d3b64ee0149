"""Find a model's or a pipeline's files: a local folder, or a Hub repo through huggingface_hub's cache.

A Diffusers repo holds far more than one load needs (every weight variant, pickles, Flax and
ONNX exports). `plan_files` picks, from a listing of the repo, exactly the files to fetch: each
wanted component folder's JSON/text files and the weights of the requested variant (falling back
to the plain weights, with a warning), safetensors over pickles (`_choose_weights`, the one rule).
A pipeline's plan also takes `model_index.json`; a single model's plan is one folder.

`fetch_files` then resolves a plan, the same way for both:

1. a local folder is used in place;
2. a Hub repo whose cached snapshot already satisfies the plan is used with no network;
3. otherwise (unless offline, see `hub_offline`) the repo is listed and `snapshot_download`
   fetches only the plan.
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


class MissingFilesError(FileNotFoundError):
    """A model's or pipeline's files are missing, incomplete, or cannot be fetched."""


class VariantNotFoundError(MissingFilesError, ValueError):
    """A requested weights variant exists in no component; a `ValueError` too, as Diffusers raises."""


@dataclass(frozen=True)
class ComponentFiles:
    """The files chosen for one component folder.

    Attributes:
        name: folder (and component) name, e.g. `unet`; "" for a model at the repo's root.
        variant: variant to load with (`fp16`), or None for the plain weights.
        weights: chosen weight files, relative to the repo root.
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
    extras: tuple[str, ...] = ()  # root-level patterns asked for besides the components

    def satisfied_by(self, listing: list[str]) -> bool:
        """True when `listing` needs nothing from the remote: no variant fallback, every extra present."""
        found = all(any(fnmatch.fnmatch(f, p) for f in listing) for p in self.extras)
        return found and not self.fallbacks


@dataclass(frozen=True)
class PipelineFiles:
    """A resolved pipeline: its folder on disk, its parsed index and the file plan."""

    folder: Path
    model_index: dict[str, Any]
    plan: FilePlan
    repo_id: str | None = None  # set when the files came from the Hub


@dataclass(frozen=True)
class FetchedFiles:
    """Where a plan's files are on disk, and the Hub repo they came from (None: a local folder)."""

    folder: Path
    plan: FilePlan
    repo_id: str | None = None


# Given a repo's listing and a way to open one small file of it, choose what to fetch.
Planner = Callable[[list[str], Callable[[str], Path]], FilePlan]


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
    """Folder ("" for the root) → names of the files directly inside it."""
    folders: dict[str, list[str]] = {}
    for path in files:
        head, _, tail = path.replace("\\", "/").rpartition("/")
        folders.setdefault(head, []).append(tail)
    return folders


def _inside(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _label(folder: str) -> str:
    """A folder as error messages name it."""
    return f"{folder}/" if folder else "the repo's root"


def plan_files(
    files: Iterable[str],
    components: Mapping[str, bool],
    variant: str | None = None,
    extra_patterns: Iterable[str] = (),
    require_variant: bool = True,
) -> FilePlan:
    """Choose the files to fetch from a repo listing.

    Args:
        files: every file of the repo, as paths relative to its root (`unet/config.json`).
        components: folder name -> whether that component needs weights (models do,
            schedulers and tokenizers do not).
        variant: weight variant such as `fp16`; components without it fall back to plain weights.
        extra_patterns: more root-level patterns to fetch (a custom pipeline's `.py` file).
        require_variant: a pipeline asks for a variant that at least one component has (as
            Diffusers does); a single model falls back to its plain weights instead.

    Raises:
        MissingFilesError: a component folder or its weights are missing, or (with
            `require_variant`) no component has the requested variant.
    """
    folders = _files_by_folder(files)
    chosen: dict[str, ComponentFiles] = {}
    fallbacks: list[str] = []
    for name, needs_weights in components.items():
        listing = folders.get(name)
        if not listing:
            raise MissingFilesError(f"component folder {name!r}/ is missing or empty")
        used, weights = _choose_weights(listing, variant)
        if needs_weights and not weights:
            raise MissingFilesError(_no_weights_message(name, listing))
        if needs_weights and variant and used is None:
            fallbacks.append(name)
        chosen[name] = ComponentFiles(name, used, tuple(_inside(name, w) for w in weights))
    _check_variant(components, variant, fallbacks, require_variant)
    patterns = list(extra_patterns)
    for name, comp in chosen.items():
        patterns += [_inside(name, p) for p in _SIDE_FILE_PATTERNS] + list(comp.weights)
    return FilePlan(chosen, tuple(patterns), tuple(fallbacks), tuple(extra_patterns))


def _no_weights_message(name: str, listing: list[str]) -> str:
    variants = sorted({v for f in listing if (info := _weight_info(f)) and (v := info[0])})
    hint = f"; it has variants {variants}: pass variant=..." if variants else ""
    return (
        f"component {name!r} has no weights: expected *.safetensors or *.bin files in {_label(name)} "
        f"(found {sorted(listing)}){hint}"
    )


def _check_variant(components, variant, fallbacks, require_variant) -> None:
    weighted = [name for name, needs in components.items() if needs]
    if require_variant and variant and weighted and len(fallbacks) == len(weighted):
        raise VariantNotFoundError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files "
            f"are available: no component has weights of variant {variant!r} (looked in {weighted}); "
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
        raise MissingFilesError(f"{folder} has no {MODEL_INDEX}; is it a Diffusers pipeline folder?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MissingFilesError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "_class_name" not in data:
        raise MissingFilesError(f"{path} must be a JSON object with a `_class_name`")
    return data


def hub_offline() -> bool:
    """True when huggingface_hub is offline: its `HF_HUB_OFFLINE` constant, or the variable set now.

    The variable is read at call time (the constant only at import), with the values
    huggingface_hub itself accepts (`1`, `ON`, `YES`, `TRUE`, any case), so tests and operators can
    flip it in a running process and both agree on what "set" means.
    """
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in constants.ENV_VARS_TRUE_VALUES


# ---------------------------------------------------------------------------- what callers ask for
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
    extras = tuple(extra_patterns)

    def plan(listing: list[str], open_file: Callable[[str], Path]) -> FilePlan:
        index = read_model_index(open_file(MODEL_INDEX).parent)
        return plan_files(listing, select(index), variant, (MODEL_INDEX, *extras))

    fetched = fetch_files(repo_id_or_path, plan, revision=revision, token=token, cache_dir=cache_dir)
    return PipelineFiles(fetched.folder, read_model_index(fetched.folder), fetched.plan, fetched.repo_id)


def resolve_model_folder(
    path_or_repo: str | os.PathLike[str],
    subfolder: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
) -> Path:
    """The local folder that holds `config.json` and the weights of one model.

    A local folder is used in place; a Hub repo id fetches only that model's folder (its
    `subfolder`): its config and the weights `plan_files` chooses. A missing variant falls back
    to the plain weights (the loader warns).

    Raises:
        MissingFilesError: no such subfolder, no weights, or the files cannot be fetched.
    """
    local = Path(path_or_repo).expanduser()
    folder = subfolder.strip("/") if subfolder else ""
    if local.is_dir():
        if not (local / folder).is_dir():
            raise MissingFilesError(f"{local} has no subfolder {subfolder!r}")
        return local / folder

    def plan(listing: list[str], open_file: Callable[[str], Path]) -> FilePlan:
        return plan_files(listing, {folder: True}, variant, require_variant=False)

    fetched = fetch_files(path_or_repo, plan, revision=revision)
    return fetched.folder / folder


# ---------------------------------------------------------------------------- the one fetch
def fetch_files(
    repo_id_or_path: str | os.PathLike[str],
    plan: Planner,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FetchedFiles:
    """Resolve `plan` against a local folder, the cache, or (unless offline) the Hub."""
    local = Path(repo_id_or_path).expanduser()
    if local.is_dir():
        return FetchedFiles(local, plan(list_folder(local), local.joinpath))
    repo_id = str(repo_id_or_path)
    if os.path.isabs(repo_id) or repo_id.startswith((".", "~")) or repo_id.count("/") != 1:
        raise MissingFilesError(
            f"{repo_id!r} is neither an existing folder nor a Hub repo id of the form 'org/name'"
        )
    cache = _cache_dir(cache_dir)
    snapshot = _cached_snapshot(repo_id, revision, cache)
    if snapshot is not None:
        cached = _plan_cached(snapshot, plan)
        if cached is not None:
            logger.info("using cached snapshot of %s at %s", repo_id, snapshot)
            return FetchedFiles(snapshot, cached, repo_id)
    if hub_offline():
        return _offline_result(repo_id, revision, snapshot, plan)
    return _download(repo_id, plan, revision, token, cache)


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


def _plan_cached(folder: Path, plan: Planner) -> FilePlan | None:
    """The plan on a cached snapshot, if the snapshot holds everything it needs."""
    listing = list_folder(folder)
    try:
        chosen = plan(listing, folder.joinpath)
    except MissingFilesError as exc:
        logger.info("cached snapshot %s is incomplete: %s", folder, exc)
        return None
    # Else the remote may hold the variant (or file) that this cache lacks.
    return chosen if chosen.satisfied_by(listing) else None


def _offline_result(repo_id: str, revision: str | None, snapshot: Path | None, plan: Planner) -> FetchedFiles:
    """Offline: a cached snapshot that lacks only a variant still loads (with fallback)."""
    if snapshot is None:
        raise MissingFilesError(
            f"{repo_id}@{revision or 'main'} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it once with network access or unset HF_HUB_OFFLINE"
        )
    return FetchedFiles(snapshot, plan(list_folder(snapshot), snapshot.joinpath), repo_id)


def _download(repo_id: str, plan: Planner, revision: str | None, token: str | bool | None, cache: str) -> FetchedFiles:
    """List the repo, plan on the listing (small files fetched as asked), then fetch the plan."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    where = f"{repo_id}@{revision or 'main'}"

    def open_file(name: str) -> Path:
        return Path(_from_hub(where, hf_hub_download, repo_id, name, revision=revision, token=token,
                              cache_dir=cache))

    listing = _from_hub(where, HfApi().list_repo_files, repo_id, revision=revision, token=token)
    chosen = plan(listing, open_file)
    folder = _from_hub(where, snapshot_download, repo_id, revision=revision, token=token, cache_dir=cache,
                       allow_patterns=list(chosen.patterns))
    return FetchedFiles(Path(folder), chosen, repo_id)


def _from_hub(where: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`, any huggingface_hub failure said as a `MissingFilesError`."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # huggingface_hub raises many kinds; keep the cause attached
        raise MissingFilesError(f"cannot fetch {where} from the Hub: {exc}") from exc
