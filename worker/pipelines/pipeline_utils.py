"""`DiffusionPipeline`: a named bundle of components, loaded from and saved to the Diffusers layout.

A pipeline class declares its components as `__init__` parameters (`vae`, `unet`, `scheduler`,
...) and its constructor options in `option_names` (`requires_safety_checker`, ...). Loading reads
`model_index.json`, maps every `[library, ClassName]` entry through `components.lookup`, loads each
component from its subfolder and calls the pipeline class with the lot; saving writes the same
layout back, so Diffusers can load what Kiln saves and the other way round.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from worker.models.modeling import ModelMixin
from worker.pipelines import components as registry
from worker.pipelines.custom import load_custom_pipeline, pipeline_files_patterns, repo_pipeline_class
from worker.pipelines.diffusers_logs import LOADING
from worker.runtime.configuration import FrozenConfig
from worker.runtime.hub import MODEL_INDEX, PipelineFiles, fetch_pipeline_files
from worker.runtime.subclasses import subclasses_in

logger = logging.getLogger(__name__)

DIFFUSERS_FORMAT_VERSION = "0.42.1"
DtypeSpec = torch.dtype | str | Mapping[str, torch.dtype | str] | None


class UnsupportedPipelineError(ValueError):
    """`model_index.json` names a pipeline class Kiln does not implement."""


class DiffusionPipeline:
    """Base class of every Kiln pipeline (and of community pipelines).

    Subclasses take their components as `__init__` arguments and hand them to
    `register_components`; scalar options go through `register_options`.
    """

    # Components that may be None or absent from `model_index.json`.
    optional_components: ClassVar[tuple[str, ...]] = ()
    _optional_components = optional_components  # Diffusers' name; subclasses set both
    # Non-component constructor arguments that `model_index.json` stores as plain values.
    option_names: ClassVar[tuple[str, ...]] = ()
    # Whether a decode changes the shared VAE (SDXL's float16 upcast): such decodes are never batched.
    upcasts_vae = False

    config: FrozenConfig

    def register_components(self, **components: Any) -> None:
        """Store each component as an attribute, in the order they are given."""
        self._component_names = tuple(components)
        for name, component in components.items():
            setattr(self, name, component)
        self.config = FrozenConfig({**getattr(self, "config", {}), "_class_name": type(self).__name__})

    def register_options(self, **options: Any) -> None:
        """Record constructor options; they are saved to `model_index.json`."""
        self.config = FrozenConfig({**getattr(self, "config", {}), **options})

    # ------------------------------------------------------------------ introspection
    @property
    def components(self) -> dict[str, Any]:
        """Component name -> component (None where absent); `Pipeline(**pipe.components)` shares them."""
        return {name: getattr(self, name) for name in self._component_names}

    def _modules(self) -> list[torch.nn.Module]:
        return [c for c in self.components.values() if isinstance(c, torch.nn.Module)]

    @property
    def device(self) -> torch.device:
        """Execution device: the offload target under `enable_model_cpu_offload`, else the device of
        the first model component (CPU when there is none)."""
        if getattr(self, "_offload_device", None) is not None:
            return self._offload_device
        for module in self._modules():
            for tensor in module.parameters():
                return tensor.device
        return torch.device("cpu")

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep model components on the CPU; each moves to `device` (default CUDA, index `gpu_id`) only
        while it runs, the previous one going back (see `worker.pipelines.offload`)."""
        from worker.pipelines.offload import ModelOffloader, execution_device

        target = execution_device(gpu_id, device)
        if target is None:
            logger.info("no CUDA device and none given: CPU offload requested, the pipeline stays where it is")
            return
        self._offloader = ModelOffloader(target)
        self._offloader.attach(self._modules())
        self._offload_device = target

    @property
    def _execution_device(self) -> torch.device:  # Diffusers' name, read by pipeline code
        return self.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the first model component (float32 when there is none)."""
        for module in self._modules():
            for tensor in module.parameters():
                return tensor.dtype
        return torch.float32

    def to(self, *args: Any, **kwargs: Any) -> DiffusionPipeline:
        """Move every model component: `pipe.to("cuda")`, `pipe.to(torch.float16)`, both, or
        Diffusers' keywords `pipe.to(device=..., dtype=...)` / `torch_dtype=`."""
        kwargs.pop("silence_dtype_warnings", None)
        if "torch_dtype" in kwargs:
            kwargs["dtype"] = kwargs.pop("torch_dtype")
        for module in self._modules():
            module.to(*args, **kwargs)
        return self

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Accepted for Diffusers code; Kiln does not offload submodule by submodule: with that device
        present, every model component moves there; without it, nothing changes."""
        self._keep_on_device(gpu_id, device)

    def _keep_on_device(self, gpu_id: int | None, device: str | torch.device) -> None:
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            logger.info("no CUDA device: CPU offload requested, the pipeline stays where it is")
            return
        index = gpu_id if gpu_id is not None else target.index
        self.to(torch.device(target.type, index) if index is not None else target)

    # ------------------------------------------------------------------ progress bar (direct calls)
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options (`disable=True`, `desc=...`) for the bars `__call__` shows; the serving
        worker reports progress through job records instead and never shows a bar."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        """A tqdm bar over `iterable` (or of `total` steps) with the configured options."""
        from tqdm.auto import tqdm

        config = getattr(self, "_progress_bar_config", {})
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("progress_bar needs an iterable or a total")

    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @classmethod
    def expected_components(cls) -> tuple[str, ...]:
        """Names of the components this class takes, in signature order."""
        return tuple(n for n in cls._init_parameters() if n not in cls.option_names)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike[str],
        torch_dtype: DtypeSpec = None,
        variant: str | None = None,
        revision: str | None = None,
        custom_pipeline: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> DiffusionPipeline:
        """Load a pipeline from a local folder or a Hub repo in the Diffusers layout.

        Args:
            repo_id_or_path: local folder or Hub repo id (`org/name`).
            torch_dtype: dtype of model components: one dtype, or a dict by component name with
                a `default` entry. None keeps float32.
            variant: weight variant (`fp16`); components without it load their plain weights.
            revision: Hub branch, tag or commit.
            custom_pipeline: a `.py` file, a folder or Hub repo with `pipeline.py` (see
                `worker.pipelines.custom`).
            token: Hub token for private repos.
            cache_dir: huggingface_hub cache folder.
            **kwargs: components that replace loaded ones (and are not read from disk), or
                constructor options such as `requires_safety_checker`.

        Returns:
            An instance of the class named in `model_index.json` (or of `cls` when called on
            a concrete pipeline class, or of the custom pipeline).
        """
        files = fetch_pipeline_files(
            repo_id_or_path,
            lambda index: _components_to_fetch(index, kwargs),
            variant=variant,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            extra_patterns=pipeline_files_patterns(custom_pipeline),
        )
        pipeline_cls = cls._pipeline_class(files, custom_pipeline, revision, token)
        loaded = _load_components(files, torch_dtype, kwargs)
        options = {k: v for k, v in files.model_index.items() if not k.startswith("_") and not isinstance(v, list)}
        return pipeline_cls._construct({**options, **loaded, **kwargs})

    @classmethod
    def _pipeline_class(cls, files: PipelineFiles, custom_pipeline, revision, token) -> type[DiffusionPipeline]:
        if custom_pipeline is not None:
            return load_custom_pipeline(custom_pipeline, files, DiffusionPipeline, revision=revision, token=token)
        if cls is not DiffusionPipeline:
            return cls
        class_name = files.model_index["_class_name"]
        if isinstance(class_name, list):
            return repo_pipeline_class(files, class_name, DiffusionPipeline, revision=revision, token=token)
        return pipeline_class(class_name)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        """A `cls` pipeline sharing `pipeline`'s components (no copies, no loading), as Diffusers'
        `from_pipe`: components and options it lacks come from `kwargs` (which also replace shared ones)."""
        options = {k: v for k, v in pipeline.config.items() if not k.startswith("_")}
        return cls._construct({**options, **pipeline.components, **kwargs})

    @classmethod
    def _construct(cls, values: dict[str, Any]) -> DiffusionPipeline:
        """Call `cls` with the values its `__init__` accepts; say what is missing."""
        params = cls._init_parameters()
        unused = sorted(set(values) - set(params))
        if unused:
            logger.warning("%s does not take %s; they are ignored", cls.__name__, unused)
        missing = [
            name
            for name, p in params.items()
            if name not in values and p.default is inspect.Parameter.empty
        ]
        if missing:
            raise ValueError(
                f"{cls.__name__} needs components {missing}, which model_index.json does not provide; "
                "pass them as keyword arguments to from_pretrained"
            )
        return cls(**{k: v for k, v in values.items() if k in params})

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike[str], safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size: int | str | None = None,
                        push_to_hub: bool = False, **kwargs: Any) -> Path:
        """Write `model_index.json` and one folder per component (Diffusers layout).

        `safe_serialization` and `max_shard_size` reach Kiln's models (`ModelMixin.save_pretrained`);
        transformers components save with their own defaults. Kiln never uploads (`push_to_hub`).
        """
        if push_to_hub:
            raise ValueError("Kiln's save_pretrained writes local folders only (no push_to_hub)")
        model_kwargs = {"safe_serialization": safe_serialization, "max_shard_size": max_shard_size}
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {
            "_class_name": type(self).__name__,
            "_diffusers_version": DIFFUSERS_FORMAT_VERSION,
        }
        for name, component in self.components.items():
            if component is None:
                index[name] = [None, None]
                continue
            index[name] = [registry.library_of(component), type(component).__name__]
            if isinstance(component, ModelMixin):
                component.save_pretrained(folder / name, variant=variant, **model_kwargs)
            else:
                registry.save_component(component, folder / name, variant)
        index.update({k: v for k, v in self.config.items() if not k.startswith("_")})
        (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return folder


def pipeline_class(name: str) -> type[DiffusionPipeline]:
    """Kiln's pipeline class for a `_class_name` (a Diffusers class name), or an error that lists
    what Kiln supports. Read from `DiffusionPipeline`'s subclasses in `worker.pipelines` (see
    `worker.runtime.subclasses`): this module cannot import the pipelines, which import it."""
    classes = subclasses_in(DiffusionPipeline, "worker.pipelines")
    if name not in classes:
        raise UnsupportedPipelineError(
            f"pipeline class {name!r} is not supported by Kiln; supported: {sorted(classes)} "
            "(or pass custom_pipeline=...)"
        )
    return classes[name]


def _component_entries(index: Mapping[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """`name -> (library, ClassName)` for every component entry of `model_index.json`."""
    entries = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2:
            raise ValueError(f"model_index.json entry {name!r} must be [library, ClassName], not {value}")
        entries[name] = (value[0], value[1])
    return entries


def _components_to_fetch(index: Mapping[str, Any], passed: Mapping[str, Any]) -> dict[str, bool]:
    """Folder name -> needs weights, for every component that must come from disk."""
    wanted = {}
    for name, (library, class_name) in _component_entries(index).items():
        if name in passed or library is None or class_name is None:
            continue
        kind = registry.lookup(class_name, library)
        if kind is not None:
            wanted[name] = kind.has_weights
    return wanted


def _as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype, also from its name ("float16", "torch.bfloat16")."""
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype {value!r} is not a torch dtype (e.g. torch.float16, 'bfloat16')")
    return dtype


def _dtype_for(name: str, torch_dtype: DtypeSpec) -> torch.dtype | None:
    """The dtype for component `name`: one dtype for all, or a dict by name with a `default`."""
    if isinstance(torch_dtype, Mapping):
        return _as_dtype(torch_dtype.get(name, torch_dtype.get("default")))
    return _as_dtype(torch_dtype)


def _load_components(files: PipelineFiles, torch_dtype: DtypeSpec, passed: Mapping[str, Any]) -> dict[str, Any]:
    """Load every component entry not passed by the caller; unsupported-but-skipped ones are None."""
    loaded: dict[str, Any] = {}
    for name, (library, class_name) in _component_entries(files.model_index).items():
        if name in passed:
            continue
        if library is None or class_name is None:
            loaded[name] = None
            continue
        kind = registry.lookup(class_name, library)
        if kind is None:
            logger.info("not loading %s (%s.%s): Kiln does not ship it", name, library, class_name)
            loaded[name] = None
            continue
        variant = files.plan.components[name].variant
        loaded[name] = kind.load(kind.cls, files.folder / name, _dtype_for(name, torch_dtype), variant)
        LOADING.info("Loaded %s as %s from `%s` subfolder of %s.", name, class_name, name, files.folder)
    return loaded
