"""What every scheduler shares: config I/O, step output, step-index bookkeeping, noise, cloning.

A scheduler instance belongs to one job. Its precomputed tables (β, ᾱ, σ) are read-only and may
be shared between clones; everything a job mutates while stepping is created by `_fresh_state`
and lives on the instance, so two jobs never see each other's history.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import warnings
from collections import OrderedDict
from typing import Any, Iterator, Sequence, TypeVar

import torch

from worker.runtime.configuration import DEFAULTED_KEY, ConfigMixin, FrozenConfig
from worker.runtime.subclasses import subclasses_in

logger = logging.getLogger(__name__)

S = TypeVar("S", bound="SchedulerMixin")
Generator = torch.Generator | Sequence[torch.Generator] | None

# Diffusers' "Karras family": schedulers that share the ᾱ-based config and swap freely.
KARRAS_FAMILY = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
)


class TimestepNotInScheduleError(ValueError, IndexError):
    """A timestep that is not on the scheduler's grid.

    A `ValueError` (Kiln's input errors) and an `IndexError`, which is what Diffusers' lookup raises
    there (it indexes an empty match list), so code catching either keeps working.
    """


class SchedulerOutput(OrderedDict):
    """Result of `step`: the sample at the next (less noisy) timestep, and x̂_0 where defined.

    Dict-like as Diffusers' outputs are: attributes, keys (the fields that are not None), string
    or integer indexing, `to_tuple()`; iterating yields the keys.
    """

    _fields = ("prev_sample", "pred_original_sample")

    def __init__(self, prev_sample: torch.Tensor | None = None,
                 pred_original_sample: torch.Tensor | None = None) -> None:
        super().__init__()
        self.prev_sample = prev_sample
        self.pred_original_sample = pred_original_sample

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in self._fields and value is not None:
            super().__setitem__(name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        return super().__getitem__(key) if isinstance(key, str) else self.to_tuple()[key]

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        return tuple(self[key] for key in self.keys())

    def __reduce__(self):  # picklable with its fields
        return (type(self), (self.prev_sample, self.pred_original_sample))


def randn_tensor(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise drawn as Diffusers draws it, so a seed gives the same numbers.

    A CPU generator with a non-CPU target draws on the CPU and moves the result; a list of
    generators draws one batch row from each, in order.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, (list, tuple)) else generator).device.type
        if gen_type != device.type and gen_type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_type != device.type:
            raise ValueError(f"cannot draw a {device.type} tensor from a {gen_type} generator")
    if isinstance(generator, (list, tuple)):
        row = (1, *shape[1:])
        rows = [torch.randn(row, generator=g, device=rand_device, dtype=dtype) for g in generator[: shape[0]]]
        return torch.cat(rows, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample values (B,) to (B, 1, 1, ...) so they broadcast against `like`."""
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


@functools.cache
def _own_keys(cls: type) -> frozenset[str]:
    return frozenset(cls._init_parameters())


def kiln_schedulers() -> dict[str, type[SchedulerMixin]]:
    """Kiln's scheduler classes by name (and their shared bases), read from the subclasses of
    `SchedulerMixin`: the base cannot import `registry`, which imports every scheduler."""
    return subclasses_in(SchedulerMixin, "worker.schedulers")


class SchedulerMixin(ConfigMixin):
    """Base of all schedulers: config file, compatibles, cloning and step-index bookkeeping."""

    config_name = "scheduler_config.json"
    order = 1
    _compatibles: tuple[str, ...] = ()
    _deprecated_kwargs: list[str] = []  # Diffusers' marker of deprecated constructor kwargs: none here
    timesteps: torch.Tensor

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(cls: type[S], config: Any = None, **overrides: Any) -> S:
        """Build from a config dict or another scheduler, carrying keys this class does not take.

        As in Diffusers, keys the source did not consume (e.g. a PNDM config's `clip_sample`)
        stay in the new scheduler's config, so a later swap to a class that takes them (DDIM)
        sees the model's value instead of its own default. Keys known to a compatible class are
        carried silently; only keys no scheduler knows are warned about.
        """
        source = getattr(config, "_internal_config", config)
        raw = dict(source or {})
        defaulted = set(raw.get(DEFAULTED_KEY) or []) | set(getattr(source, "defaulted", ()))
        known = cls._init_parameters()
        sibling_keys = set().union(*(_own_keys(c) for c in kiln_schedulers().values()))
        carried = {k: v for k, v in raw.items() if not k.startswith("_") and k not in known and k not in defaulted}
        quiet = {k: v for k, v in raw.items() if not (k in carried and k in sibling_keys)}
        if isinstance(source, FrozenConfig):  # keep the swap-rule bookkeeping of the source
            quiet = FrozenConfig(quiet, source.source_class, source.defaulted)
        scheduler = super().from_config(quiet, **overrides)
        own = scheduler._internal_config
        scheduler._internal_config = FrozenConfig({**carried, **own}, own.source_class, own.defaulted)
        return scheduler

    @classmethod
    def from_pretrained(
        cls: type[S], path: str | os.PathLike[str], subfolder: str | None = None, **overrides: Any
    ) -> S:
        """Build from `scheduler_config.json` in a local folder (or its `subfolder`)."""
        return cls.from_config(cls.load_config(path, subfolder=subfolder), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        self.save_config(save_directory)

    @property
    def compatibles(self) -> list[type[SchedulerMixin]]:
        """Classes this scheduler's config can be swapped to with `from_config` (those Kiln has)."""
        classes = kiln_schedulers()
        names = sorted({type(self).__name__, *self._compatibles})
        return [classes[name] for name in names if name in classes]

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or replace config keys after construction (Diffusers' API; the config stays frozen)."""
        own = self._internal_config
        self._internal_config = FrozenConfig({**own, **kwargs}, own.source_class, own.defaulted)

    def __getattr__(self, name: str) -> Any:
        """Config keys read as attributes still work, with Diffusers' FutureWarning."""
        config = self.__dict__.get("_internal_config")
        if config is not None and not name.startswith("_") and name in config:
            warnings.warn(f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object "
                          f"attribute is deprecated. Please access '{name}' over '{type(self).__name__}'s config "
                          f"object instead, e.g. 'scheduler.config.{name}'.", FutureWarning, stacklevel=2)
            return config[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def clone(self: S) -> S:
        """A fresh scheduler for a new job: same config and tables, no step history.

        Tables are shared, not copied: no scheduler mutates a tensor in place.
        """
        twin = copy.copy(self)
        twin.__dict__.update(self._fresh_state())
        return twin

    def _option(self, key: str, default: Any = None) -> Any:
        """The config value of a key this class takes, else `default`.

        Configs also carry keys of other schedulers (see `from_config`); those must not change
        this scheduler's behaviour (a DDPM `thresholding` means nothing to Heun).
        """
        return self.config[key] if key in _own_keys(type(self)) else default

    def _fresh_state(self) -> dict[str, Any]:
        """Per-job mutable state, reset by `set_timesteps` and `clone`."""
        return {"_step_index": None, "_begin_index": None}

    def _reset(self) -> None:
        self.__dict__.update(self._fresh_state())

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- step-index bookkeeping ---------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next step; None until the first `step`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First step index, set by pipelines that start mid-schedule (image-to-image)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule; the second match when it occurs twice.

        Second-order schedulers repeat timesteps; starting at the second copy keeps a pipeline
        that enters mid-schedule from skipping a σ. Float grids (t = 1000 σ) carry float32 rounding
        (254.00002), so a timestep with no exact match takes the entries equal to it within that
        rounding: training code passes integer timesteps.
        """
        schedule = self.timesteps if schedule is None else schedule
        timestep = torch.as_tensor(timestep, device=schedule.device)
        matches = (schedule == timestep).nonzero()
        if len(matches) == 0 and schedule.is_floating_point():
            matches = torch.isclose(schedule, timestep.to(schedule.dtype), rtol=1e-5, atol=1e-5).nonzero()
        if len(matches) == 0:
            raise TimestepNotInScheduleError(f"timestep {float(timestep)} is not in this scheduler's timesteps")
        return int(matches[1 if len(matches) > 1 else 0].item())

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _step_indices(self, timesteps: torch.Tensor) -> torch.Tensor | list[int]:
        """Step index for each noise level asked of `add_noise` (a whole training batch at once)."""
        if self._begin_index is None:
            schedule, wanted = self.timesteps.to(timesteps.device), timesteps.flatten()
            matches = schedule[None, :] == wanted[:, None]  # (B, n)
            count = matches.sum(dim=1)
            if bool((count == 0).any()):  # the class decides (an error, or Diffusers' fallback)
                return [self.index_for_timestep(t, schedule) for t in wanted]
            nth = torch.where(count > 1, 2, 1)  # the second copy of a repeated timestep, as index_for_timestep
            return ((matches.cumsum(dim=1) == nth[:, None]) & matches).int().argmax(dim=1)
        index = self._step_index if self._step_index is not None else self._begin_index
        return [index] * timesteps.flatten().shape[0]

    def _require_timesteps(self) -> None:
        if getattr(self, "num_inference_steps", None) is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps before step")

    def _check_steps_only(self, timesteps: Any, sigmas: Any) -> None:
        """For schedulers whose grid comes from a step count alone: refuse custom timesteps or σ."""
        if timesteps is not None or sigmas is not None:
            raise ValueError(f"{type(self).__name__} takes num_inference_steps only, not custom timesteps or sigmas")

    @staticmethod
    def _check_timestep_args(num_inference_steps: int | None, *customs: Any) -> None:
        given = [c for c in customs if c is not None]
        if len(given) > 1 or (given and num_inference_steps is not None):
            raise ValueError("pass only one of num_inference_steps, timesteps or sigmas")
        if not given and num_inference_steps is None:
            raise ValueError("pass num_inference_steps, timesteps or sigmas")

    @staticmethod
    def _output(return_dict: bool, prev: torch.Tensor, x0: torch.Tensor | None = None) -> Any:
        out = SchedulerOutput(prev, x0)
        return out if return_dict else out.to_tuple()
