"""The one error type of the LoRA runtime: a bad adapter file, name or request, said plainly."""

from __future__ import annotations


class LoraError(ValueError):
    """An adapter cannot be loaded, found or applied; the message names the keys or names at fault."""


def sample(names, limit: int = 8) -> str:
    """`names` for an error message: sorted, the first `limit`, then how many more."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
