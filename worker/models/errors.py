"""Errors raised while building or loading a model.

They are `ValueError`s of the runtime's own: the serving worker turns any failure to load a model
into its job error (`shared.errors.ModelLoadError`, code + message), so the runtime needs no
serving base class.
"""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A checkpoint cannot be loaded into a model: files missing, unreadable or mismatched.

    The message names the folder or file and the offending keys, so an operator can tell a
    truncated download from a checkpoint built for another architecture.
    """


class ModelConfigError(ValueError):
    """A model config asks for something this runtime does not build (unknown block type, ...)."""
