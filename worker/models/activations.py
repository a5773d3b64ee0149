"""Activation functions by the names configs use (`act_fn`)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.errors import ModelConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,  # the original name of SiLU
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}

# Functional forms that can overwrite their input (used on fresh intermediates under no_grad).
_IN_PLACE: dict[type[nn.Module], Callable[..., torch.Tensor]] = {nn.SiLU: F.silu, nn.Mish: F.mish, nn.ReLU: F.relu}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for `name`."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ModelConfigError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def activate(activation: nn.Module, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """`activation(x)`, overwriting `x` when `inplace` and the activation allows it."""
    functional = _IN_PLACE.get(type(activation)) if inplace else None
    return functional(x, inplace=True) if functional is not None else activation(x)
