"""A job's scheduler: the API's short name → a fresh Kiln scheduler, from the model's own config.

Short names and their config overrides are plain data in `shared.schedulers` (the API lists
and validates them without torch); this module resolves them to the runtime's classes
(`worker.schedulers.scheduler_class`) for the worker.
"""

from __future__ import annotations

from typing import Any, Mapping

from shared.schedulers import FLOW, SCHEDULERS, flow_config_for, scheduler_kind, scheduler_names
from worker.runtime.configuration import DEFAULTED_KEY, FrozenConfig
from worker.schedulers import SchedulerMixin, scheduler_class


def _class_and_config(base: Mapping[str, Any] | SchedulerMixin) -> tuple[str | None, Mapping[str, Any]]:
    """The class name (if known) and config of a model's scheduler, however it was given."""
    if isinstance(base, SchedulerMixin):
        return type(base).__name__, base.config
    return getattr(base, "source_class", None) or base.get("_class_name"), base


def _flow_source(class_name: str, config: Mapping[str, Any]) -> FrozenConfig:
    """A flow model's config renamed for `class_name`, keeping the swap-rule bookkeeping."""
    defaulted = set(getattr(config, "defaulted", ())) | set(config.get(DEFAULTED_KEY) or [])
    renamed = flow_config_for(class_name, {k: v for k, v in config.items() if k != DEFAULTED_KEY})
    renamed_defaults = flow_config_for(class_name, {k: None for k in defaulted})
    return FrozenConfig(renamed, getattr(config, "source_class", None) or config.get("_class_name"),
                        tuple(renamed_defaults))


def build_scheduler(short_name: str, base_config: Mapping[str, Any] | SchedulerMixin) -> SchedulerMixin:
    """A fresh scheduler for one job: `short_name`'s class, from the model's scheduler config.

    Args:
        short_name: a key of `shared.schedulers.SCHEDULERS` (e.g. `dpmpp_2m_karras`, `flow_unipc`).
        base_config: the model's scheduler config (dict, `config` of a scheduler, or a scheduler).
            Keys it took as defaults are dropped (the swap rule), then the short name's
            overrides are applied. A flow model's config is renamed for the target class first
            (see `shared.schedulers`).

    Raises:
        ValueError: for an unknown name, or a name of the other kind than the model (a flow
            scheduler for an ε-prediction model, or the reverse).
    """
    if short_name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {short_name!r}; known: {', '.join(SCHEDULERS)}")
    choice = SCHEDULERS[short_name]
    cls = scheduler_class(choice.class_name)
    source_class, config = _class_and_config(base_config)
    kind = scheduler_kind({**config, "_class_name": source_class} if source_class else config)
    if kind != choice.kind:
        raise ValueError(f"scheduler {short_name!r} is for {choice.kind} models, not this {kind} model; "
                         f"allowed: {', '.join(scheduler_names(kind))}")
    if isinstance(base_config, SchedulerMixin) and type(base_config) is cls and not choice.overrides:
        return base_config.clone()
    source = base_config if isinstance(base_config, SchedulerMixin) else dict(base_config)
    if kind == FLOW:
        source = _flow_source(choice.class_name, config)
    return cls.from_config(source, **dict(choice.overrides))
