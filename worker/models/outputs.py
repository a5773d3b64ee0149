"""What the models return when `return_dict=True`.

`BaseOutput` behaves like Diffusers' outputs: a dataclass whose set (non-None) fields are also
the items of an ordered dict, so `out.sample`, `out["sample"]`, `out[0]`, `out.keys()` and
`out.to_tuple()` all work, and `isinstance(out, dict)` holds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from worker.models.distributions import DiagonalGaussianDistribution


class BaseOutput(OrderedDict):
    """Base of the dataclass outputs: attributes and dict items stay in step.

    Fields set to None are attributes but not items (they are left out of `to_tuple()`), as in
    Diffusers, so `out[0]` is the first field that has a value.
    """

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                super().__setitem__(field.name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __delitem__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"cannot delete items of a {type(self).__name__}")

    def setdefault(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"cannot use setdefault on a {type(self).__name__}")

    def pop(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"cannot pop items of a {type(self).__name__}")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"cannot update a {type(self).__name__}; set its fields instead")

    def __reduce__(self):  # pickle/deepcopy through the dataclass constructor
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the set fields, in field order."""
        return tuple(OrderedDict.__getitem__(self, k) for k in self.keys())


@dataclass
class UNetOutput(BaseOutput):
    """Model prediction, (B, C, H, W)."""

    sample: torch.Tensor = None  # type: ignore[assignment]


# Diffusers' names for the same outputs.
UNet2DOutput = UNet2DConditionOutput = UNetOutput


@dataclass
class DecoderOutput(BaseOutput):
    """Decoded images, (B, 3, H, W) in [-1, 1] (roughly)."""

    sample: torch.Tensor = None  # type: ignore[assignment]
    commit_loss: torch.Tensor | None = None


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """Posterior over latents for each encoded image."""

    latent_dist: "DiagonalGaussianDistribution" = None  # type: ignore[assignment]
