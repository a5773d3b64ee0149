"""Which adapters each row of a model call uses: the per-call context that lets jobs with different
LoRA adapters (and jobs with none) share one batched model call.

Two context values, both `contextvars` so concurrent threads and tasks never see each other's:

- `adapter_rows(rows)`: row i of the next model calls adds the deltas of `rows[i]` (a mapping
  adapter name -> weight; empty = base model only). A batch of N = k·R rows for R routed rows
  tiles them (row n uses `rows[n % R]`), which is exactly the layout of `torch.cat([x] * k)` used
  for classifier-free guidance. Without it, every LoRA layer uses its own active adapters
  (`set_adapters`), the single-pipeline case where all rows share one set.
- `lora_scale(s)`: multiplies every adapter weight (Diffusers' `cross_attention_kwargs={"scale": s}`).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from worker.lora.errors import LoraError

AdapterSet = Mapping[str, float]  # adapter name -> weight


@dataclass(frozen=True)
class Group:
    """The rows of one adapter in a call: `rows` (n_a,) indices, or a `slice` when they are one
    contiguous run (a job's rows in the batcher are; None = every row), and `weight`, one float for
    all of them or (n_a,) per row."""

    name: str
    rows: torch.Tensor | slice | None
    weight: float | torch.Tensor


@dataclass(frozen=True)
class AdapterRows:
    """Per-row adapter sets for a batch; groups are built once per (batch size, device) and shared
    by every LoRA layer of the call."""

    rows: tuple[tuple[tuple[str, float], ...], ...]
    _groups: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, rows: Sequence[AdapterSet]) -> AdapterRows:
        if not rows:
            raise LoraError("adapter_rows needs at least one row")
        return cls(tuple(tuple(sorted((str(k), float(v)) for k, v in row.items())) for row in rows))

    @property
    def names(self) -> set[str]:
        return {name for row in self.rows for name, _ in row}

    def groups(self, batch: int, device: torch.device) -> list[Group]:
        key = (batch, str(device))
        if key not in self._groups:
            self._groups[key] = self._build(batch, device)
        return self._groups[key]

    @property
    def slots(self) -> tuple[tuple[tuple[str, float], ...], ...]:
        """The distinct adapter sets of the rows (the empty set included), sorted: the same mix of
        jobs gives the same slots whatever order its rows come in, so a layer's per-slot tensors
        are reused across calls that order the rows differently."""
        if "slots" not in self._groups:
            self._groups["slots"] = tuple(sorted(set(self.rows)))
        return self._groups["slots"]

    def slot_index(self, batch: int, device: torch.device) -> torch.Tensor:
        """(batch,) index into `slots` of each row's adapter set (rows tiled as in `groups`)."""
        key = ("slots", batch, str(device))
        if key not in self._groups:
            self._check_tiling(batch)
            position = {row: i for i, row in enumerate(self.slots)}
            self._groups[key] = torch.tensor([position[self.rows[n % len(self.rows)]] for n in range(batch)],
                                             device=device)
        return self._groups[key]

    def _check_tiling(self, batch: int) -> None:
        if batch % len(self.rows):
            raise LoraError(f"a batch of {batch} rows is not a multiple of the {len(self.rows)} rows given to "
                            "adapter_rows")

    def _build(self, batch: int, device: torch.device) -> list[Group]:
        self._check_tiling(batch)
        R = len(self.rows)
        members: dict[str, tuple[list[int], list[float]]] = {}
        for n in range(batch):
            for name, weight in self.rows[n % R]:
                rows, weights = members.setdefault(name, ([], []))
                rows.append(n)
                weights.append(weight)
        return [_group(name, rows, weights, batch, device) for name, (rows, weights) in members.items()]


def _group(name: str, rows: list[int], weights: list[float], batch: int, device: torch.device) -> Group:
    index: torch.Tensor | slice | None = torch.tensor(rows, device=device)
    if rows == list(range(rows[0], rows[-1] + 1)):  # one run: a view, no gather or scatter
        index = None if len(rows) == batch else slice(rows[0], rows[-1] + 1)
    same = all(w == weights[0] for w in weights)
    weight = weights[0] if same else torch.tensor(weights, device=device)
    return Group(name, index, weight)


_ROWS: contextvars.ContextVar[AdapterRows | None] = contextvars.ContextVar("kiln_lora_rows", default=None)
_SCALE: contextvars.ContextVar[float] = contextvars.ContextVar("kiln_lora_scale", default=1.0)


@contextlib.contextmanager
def adapter_rows(rows: Sequence[AdapterSet] | AdapterRows) -> Iterator[AdapterRows]:
    """Route row i of the model calls inside the block to the adapters `rows[i]` (tiled over k·R rows)."""
    routed = rows if isinstance(rows, AdapterRows) else AdapterRows.of(rows)
    token = _ROWS.set(routed)
    try:
        yield routed
    finally:
        _ROWS.reset(token)


@contextlib.contextmanager
def lora_scale(scale: float | None) -> Iterator[None]:
    """Multiply every adapter's weight by `scale` inside the block (None = unchanged)."""
    token = _SCALE.set(_SCALE.get() * (1.0 if scale is None else float(scale)))
    try:
        yield
    finally:
        _SCALE.reset(token)


def current_rows() -> AdapterRows | None:
    return _ROWS.get()


def current_scale() -> float:
    return _SCALE.get()
