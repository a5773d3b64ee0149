"""Community pipelines: a Python file that defines one subclass of `DiffusionPipeline`.

`custom_pipeline` may name:

1. a local `.py` file;
2. a local folder holding `pipeline.py`;
3. `<name>` where the model folder (local or downloaded) holds `<name>.py`;
4. `<name>` of a community pipeline: `<name>.py` in `$KILN_COMMUNITY_PIPELINES` (default: the
   checkout's `examples/community/`);
5. a Hub repo id (`org/name`) holding `pipeline.py`.

Local files are the operator's own and always run. Code that comes from the Hub (cases 3 and 5
for a Hub model, and `_class_name: [module, Class]` entries) runs only when the operator sets
`KILN_ALLOW_REMOTE_CODE=1` *and* lists the repo in `KILN_REMOTE_CODE_ALLOWLIST`
(comma-separated repo ids).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from worker.runtime.hub import PipelineFiles

logger = logging.getLogger(__name__)

ALLOW_ENV = "KILN_ALLOW_REMOTE_CODE"
ALLOWLIST_ENV = "KILN_REMOTE_CODE_ALLOWLIST"
COMMUNITY_ENV = "KILN_COMMUNITY_PIPELINES"
PIPELINE_FILE = "pipeline.py"

# The pipeline base class, passed in by `DiffusionPipeline` itself: this module is imported by
# the base's loader, so it takes the base as an argument instead of importing it back.
P = TypeVar("P", bound=type)


class CustomPipelineError(ValueError):
    """A custom pipeline cannot be found or does not define exactly one pipeline class."""


class RemoteCodeRefusedError(PermissionError):
    """Code from the Hub was asked for, but the operator has not allowed it."""


def remote_code_allowed(repo_id: str) -> bool:
    """True only if remote code is switched on and `repo_id` is on the allowlist."""
    if os.environ.get(ALLOW_ENV, "").strip() != "1":
        return False
    allowlist = {r.strip() for r in os.environ.get(ALLOWLIST_ENV, "").split(",") if r.strip()}
    return repo_id in allowlist


def _require_allowed(repo_id: str, what: str) -> None:
    if not remote_code_allowed(repo_id):
        raise RemoteCodeRefusedError(
            f"refusing to run {what} from Hub repo {repo_id!r}: remote code needs {ALLOW_ENV}=1 "
            f"and {repo_id!r} listed in {ALLOWLIST_ENV} (comma-separated repo ids)"
        )


def _is_repo_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "/", "~")) and not value.endswith(".py")


def pipeline_files_patterns(custom_pipeline: str | os.PathLike[str] | None) -> tuple[str, ...]:
    """Extra files to fetch with a Hub model: `<name>.py` when the name may live in the model repo."""
    if custom_pipeline is None:
        return ()
    value = str(custom_pipeline)
    if Path(value).expanduser().exists() or "/" in value or value.endswith(".py"):
        return ()
    return (f"{value}.py",)


def load_custom_pipeline(
    custom_pipeline: str | os.PathLike[str],
    files: PipelineFiles,
    base: P,
    revision: str | None = None,
    token: str | bool | None = None,
) -> P:
    """Resolve `custom_pipeline` to a file (checking remote-code permission) and load its `base` subclass."""
    value = str(custom_pipeline)
    local = Path(value).expanduser()
    if local.is_file():
        return pipeline_class_in(local, base)
    if local.is_dir():
        return pipeline_class_in(_require_file(local / PIPELINE_FILE), base)
    beside_model = files.folder / f"{value}.py"
    if beside_model.is_file():
        if files.repo_id is not None:
            _require_allowed(files.repo_id, f"custom pipeline {beside_model.name}")
        return pipeline_class_in(beside_model, base)
    community = community_folder() / f"{value}.py"
    if "/" not in value and community.is_file():
        return pipeline_class_in(community, base)
    if _is_repo_id(value):
        return pipeline_class_in(_download_pipeline_file(value, PIPELINE_FILE, revision, token), base)
    raise CustomPipelineError(
        f"custom_pipeline {value!r} is not a .py file, a folder with {PIPELINE_FILE}, a file "
        f"{value}.py in the model folder or in {community_folder()}, or a Hub repo id"
    )


def community_folder() -> Path:
    """Where bare community pipeline names are looked up (`$KILN_COMMUNITY_PIPELINES`)."""
    default = Path(__file__).resolve().parents[2] / "examples" / "community"
    return Path(os.environ.get(COMMUNITY_ENV) or default)


def repo_pipeline_class(
    files: PipelineFiles, class_name: list[str], base: P, revision: str | None = None,
    token: str | bool | None = None,
) -> P:
    """Load `_class_name: [module_file, ClassName]`: a pipeline class shipped inside the model repo."""
    module_file, name = class_name
    filename = module_file if module_file.endswith(".py") else f"{module_file}.py"
    path = files.folder / filename
    if files.repo_id is not None:
        _require_allowed(files.repo_id, f"pipeline code {filename}")
        if not path.is_file():
            path = _download_pipeline_file(files.repo_id, filename, revision, token, checked=True)
    module = _import_file(_require_file(path))
    cls = getattr(module, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise CustomPipelineError(f"{path} does not define a {base.__name__} subclass named {name!r}")
    return cls


def _download_pipeline_file(
    repo_id: str, filename: str, revision: str | None, token: str | bool | None, checked: bool = False
) -> Path:
    if not checked:
        _require_allowed(repo_id, f"custom pipeline {filename}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))
    except Exception as exc:  # huggingface_hub raises many kinds; keep the cause attached
        raise CustomPipelineError(f"cannot fetch {filename} from Hub repo {repo_id!r}: {exc}") from exc


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise CustomPipelineError(f"custom pipeline file {path} does not exist")
    return path


def _import_file(path: Path) -> ModuleType:
    """Import a file as a module with a name unique to its path (two files never collide)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"kiln_custom_pipeline_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CustomPipelineError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    return module


def pipeline_class_in(path: Path, base: P) -> P:
    """The one `base` subclass defined (not merely imported) in the file at `path`."""
    module = _import_file(path)
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = [c.__name__ for c in found]
        raise CustomPipelineError(
            f"{path} must define exactly one {base.__name__} subclass; it defines {len(found)} {names}"
        )
    logger.info("using custom pipeline %s from %s", found[0].__name__, path)
    return found[0]
