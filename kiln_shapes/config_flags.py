"""Command-line flags for the training programs' config dataclasses: one `--some-field` per field,
typed by its default, and the config built back from the parsed arguments."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

Config = TypeVar("Config")


def add_config_flags(parser: argparse.ArgumentParser, config: type) -> None:
    """`--field-name` for every field of the dataclass `config`, defaulting to the field's default."""
    for field in dataclasses.fields(config):
        kind = _flag if isinstance(field.default, bool) else type(field.default)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default)


def config_from(args: argparse.Namespace, config: type[Config]) -> Config:
    """The dataclass `config` built from the parsed arguments that name its fields."""
    names = {f.name for f in dataclasses.fields(config)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    return config(**values)


def _flag(text: str) -> bool:
    """A boolean option's value: true/false, yes/no, 1/0."""
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "yes", "1")
