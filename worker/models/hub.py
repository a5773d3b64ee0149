"""Where a model's files are: a local folder, or a Hub repo fetched into the local cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from worker.models.errors import ModelLoadError
from worker.models.weights import WEIGHTS_STEM

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_SAFETENSORS_PATTERNS = ("config.json", f"{WEIGHTS_STEM}*.safetensors", f"{WEIGHTS_STEM}*.safetensors.index*.json")
_PICKLE_PATTERNS = ("config.json", f"{WEIGHTS_STEM}*.bin", f"{WEIGHTS_STEM}*.bin.index*.json")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (read at call time, so tests and operators can flip it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_model_folder(
    path_or_repo: str | os.PathLike[str], subfolder: str | None = None, revision: str | None = None
) -> Path:
    """Return the local folder that holds `config.json` and the weights of one model.

    A path to an existing directory is used as is; anything else is a Hub repo id whose config
    and weights (only those of `subfolder`) are fetched with `snapshot_download`: safetensors
    first, pickles only when the repo has no safetensors. HF_HUB_OFFLINE=1 restricts this to
    the local cache.
    """
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise ModelLoadError(f"{local} has no subfolder {subfolder!r}")
        return folder
    repo_id = str(path_or_repo)
    if local.is_absolute() or repo_id.startswith((".", "~")) or repo_id.count("/") > 1:
        raise ModelLoadError(f"{repo_id} is neither an existing folder nor a Hub repo id (owner/name)")
    folder = _download(repo_id, subfolder, revision, _SAFETENSORS_PATTERNS)
    if not any(folder.glob(f"{WEIGHTS_STEM}*.safetensors*")):
        folder = _download(repo_id, subfolder, revision, _PICKLE_PATTERNS)
    return folder


def _download(repo_id: str, subfolder: str | None, revision: str | None, names: tuple[str, ...]) -> Path:
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    offline = hub_offline()
    try:
        root = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=[prefix + name for name in names],
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id} (revision {revision or 'main'}) is not in the local Hub cache and "
            f"{'HF_HUB_OFFLINE is set' if offline else 'the Hub cannot be reached'}: {exc}"
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"cannot fetch {repo_id} from the Hub: {exc}") from exc
    folder = Path(root) / subfolder if subfolder else Path(root)
    logger.info("resolved %s (subfolder %s) to %s", repo_id, subfolder, folder)
    return folder
