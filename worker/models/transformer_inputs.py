"""Checks of the FLUX / SD3 transformers' forward arguments, with errors that name the problem."""

from __future__ import annotations

from typing import Any

# joint_attention_kwargs that change nothing here (`scaled_by` takes a LoRA "scale" off before the check).
NEUTRAL_ATTENTION_KWARGS: dict[str, Any] = {"scale": 1.0}


def check_joint_attention_kwargs(kwargs: dict[str, Any] | None) -> None:
    """Refuse `joint_attention_kwargs` that would change the result (IP-Adapter inputs, LoRA scales)."""
    unsupported = sorted(k for k, v in (kwargs or {}).items() if NEUTRAL_ATTENTION_KWARGS.get(k, object()) != v)
    if unsupported:
        raise ValueError(f"joint_attention_kwargs {unsupported} are not supported by Kiln's transformers "
                         f"(accepted: {NEUTRAL_ATTENTION_KWARGS})")


def require_inputs(model: str, **inputs: Any) -> None:
    """Raise naming the first of `inputs` that is None (they default to None only for Diffusers' signature)."""
    missing = [name for name, value in inputs.items() if value is None]
    if missing:
        raise ValueError(f"{model}.forward needs {', '.join(missing)}")
