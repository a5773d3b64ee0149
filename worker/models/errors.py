"""Errors raised while building or loading a model.

Both are `shared.errors.ModelLoadError`s, so a worker records them on the job as data (code +
message); they are also `ValueError`s for callers that use the runtime on its own.
"""

from __future__ import annotations

from shared.errors import ModelLoadError as _SharedModelLoadError


class ModelLoadError(_SharedModelLoadError, ValueError):
    """A checkpoint cannot be loaded into a model: files missing, unreadable or mismatched.

    The message names the folder or file and the offending keys, so an operator can tell a
    truncated download from a checkpoint built for another architecture.
    """


class ModelConfigError(_SharedModelLoadError, ValueError):
    """A model config asks for something this runtime does not build (unknown block type, ...)."""

    code = "model_config_invalid"
