"""Activation functions by the names configs use (`act_fn`)."""

from __future__ import annotations

from torch import nn

from worker.models.errors import ModelConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,  # the original name of SiLU
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for `name`."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ModelConfigError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None
