"""Constructor arguments as configuration, saved and reloaded as JSON.

Every model and scheduler in Kiln is built from a Diffusers-style config file
(`config.json`, `scheduler_config.json`). A class opts in by subclassing
`ConfigMixin`, naming its file in `config_name` and decorating `__init__` with
`register_to_config`: the decorator records every constructor argument (passed or
defaulted) as the instance's frozen `config`, plus which ones took their default.

That last list drives the swap rule of `from_config`: keys the source object took
as defaults are not carried to the new class, which then uses its own defaults.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound="ConfigMixin")

# Private bookkeeping key: constructor arguments that were not passed explicitly.
DEFAULTED_KEY = "_use_default_values"
KILN_VERSION = "0.1.0"


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes (`config.num_train_timesteps`).

    Besides its keys it remembers, out of band, the class that made it (`source_class`) and
    which keys took their defaults (`defaulted`), so `from_config(other.config)` can apply the
    swap rule without private keys showing up among the config's items.
    """

    def __init__(self, data: Any = (), source_class: str | None = None,
                 defaulted: tuple[str, ...] = ()) -> None:
        super().__init__(data)
        object.__setattr__(self, "source_class", source_class)
        object.__setattr__(self, "defaulted", tuple(defaulted))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config is frozen; build a new object with from_config(config, key=value)")

    __setitem__ = __delitem__ = __setattr__ = _readonly  # type: ignore[assignment]
    pop = popitem = clear = update = setdefault = _readonly  # type: ignore[assignment]

    def __reduce__(self):  # picklable despite the read-only mutators
        return (FrozenConfig, (dict(self), self.source_class, self.defaulted))


def register_to_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate `__init__` so that its arguments become `self.config`."""
    signature = inspect.signature(init)
    parameters = {
        name: p.default
        for name, p in list(signature.parameters.items())[1:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }

    @functools.wraps(init)
    def wrapper(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        passed = {k: v for k, v in bound.arguments.items() if k in parameters}
        values = {name: passed.get(name, default) for name, default in parameters.items()}
        values = {k: _jsonable(v) for k, v in values.items() if v is not inspect.Parameter.empty}
        defaulted = sorted(set(values) - set(passed))
        self._internal_config = FrozenConfig(values, type(self).__name__, tuple(defaulted))
        init(self, *args, **kwargs)

    return wrapper


def _jsonable(value: Any) -> Any:
    """Tuples become lists so that a config equals its JSON round trip."""
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


class ConfigMixin:
    """Gives a class `config`, `from_config`, `save_config` and `load_config`."""

    config_name: str = "config.json"
    # Keys a subclass accepts in a config but deliberately ignores (no warning).
    ignored_config_keys: tuple[str, ...] = ()
    _internal_config: FrozenConfig

    @property
    def config(self) -> FrozenConfig:
        """The constructor arguments (with the swap-rule bookkeeping attached, not as keys)."""
        return self._internal_config

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or replace config keys after construction (Diffusers' method of the same name).

        The config stays frozen: a new one replaces it. Keys set here count as passed, not defaulted.
        """
        current = getattr(self, "_internal_config", FrozenConfig({}, type(self).__name__))
        values = {**current, **{k: _jsonable(v) for k, v in kwargs.items()}}
        defaulted = tuple(k for k in current.defaulted if k not in kwargs)
        self._internal_config = FrozenConfig(values, current.source_class, defaulted)

    @classmethod
    def _init_parameters(cls) -> set[str]:
        signature = inspect.signature(cls.__init__)
        return {
            name
            for name, p in list(signature.parameters.items())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    @classmethod
    def from_config(cls: type[T], config: dict[str, Any] | None = None, **overrides: Any) -> T:
        """Build an instance from a config dict (or another object's `config`).

        Keys that the source took as defaults are dropped, so this class applies its own
        defaults for them; keys this class does not know are ignored with a warning;
        `overrides` win over everything.
        """
        source = getattr(config, "_internal_config", config)
        raw = dict(source or {})
        defaulted = set(raw.pop(DEFAULTED_KEY, []) or []) | set(getattr(source, "defaulted", ()))
        source_class = getattr(source, "source_class", None) or raw.get("_class_name")
        swapping = source_class is not None and source_class != cls.__name__
        known = cls._init_parameters()
        kwargs: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in raw.items():
            if key.startswith("_") or key in defaulted:
                continue
            if key in known:
                kwargs[key] = value
            elif key not in cls.ignored_config_keys:
                unknown.append(key)
        if unknown and swapping:  # keys of the source class that this one has no use for
            logger.debug("%s ignores %s from a %s config", cls.__name__, sorted(unknown), source_class)
        elif unknown:
            logger.warning(
                "config keys %s are not used by %s and are ignored", sorted(unknown), cls.__name__
            )
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"{cls.__name__} takes no config keys {bad}; it takes {sorted(known)}")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_json_string(self) -> str:
        data = {"_class_name": type(self).__name__, "_diffusers_version": "0.42.1",
                "_kiln_version": KILN_VERSION, **self.config}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write `config_name` into `save_directory` (created if missing)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_name
        path.write_text(self.to_json_string())
        return path

    @classmethod
    def load_config(
        cls, path: str | os.PathLike[str], subfolder: str | None = None
    ) -> dict[str, Any]:
        """Read a config dict from a file, or from `config_name` inside a folder."""
        target = Path(path)
        if subfolder:
            target = target / subfolder
        if target.is_dir():
            target = target / cls.config_name
        if not target.is_file():
            raise FileNotFoundError(f"no {cls.config_name} at {target}")
        try:
            data = json.loads(target.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{target} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{target} must hold a JSON object, not {type(data).__name__}")
        return data
