"""Helpers for model parity tests: diffusers is the oracle, run on the same weights."""

from __future__ import annotations

from pathlib import Path

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def save(model, folder: Path, **kwargs) -> Path:
    """save_pretrained into `folder` and return it (works for ours and diffusers')."""
    model.save_pretrained(folder, **kwargs)
    return folder
