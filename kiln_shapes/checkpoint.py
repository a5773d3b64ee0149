"""The resumable training state of kiln_shapes' programs: `work_dir/checkpoint.pt`, written
atomically, holding the state dicts of the named modules and optimizers plus a few scalars."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)
FILE = "checkpoint.pt"


def save(work_dir: str | Path, state: dict[str, Any], names: Sequence[str], **scalars: Any) -> Path:
    """Write the state dicts of `state[name]` for `names` and `scalars` (step, phase, config)."""
    payload = {name: state[name].state_dict() for name in names}
    payload.update(scalars)
    path = Path(work_dir) / FILE
    torch.save(payload, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # a crash mid-write leaves the previous checkpoint whole
    logger.info("checkpoint: step %s -> %s", scalars.get("step"), path)
    return path


def load(work_dir: str | Path, state: dict[str, Any], names: Sequence[str], device: str) -> dict[str, Any] | None:
    """Load `work_dir/checkpoint.pt` into `state[name]` for `names`; its payload, or None without one."""
    path = Path(work_dir) / FILE
    if not path.exists():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    for name in names:
        state[name].load_state_dict(payload[name])
    logger.info("resumed from %s: step %d", path, payload["step"])
    return payload
