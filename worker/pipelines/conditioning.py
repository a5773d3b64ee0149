"""What the denoiser needs besides latents and timesteps, one row per sample.

Every field is batched along dim 0, so the step batcher can concatenate the conditioning of many
jobs (`Conditioning.cat`) and run one model call for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch


def _cat_optional(values: Sequence[torch.Tensor | None], name: str) -> torch.Tensor | None:
    present = [v is not None for v in values]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"cannot batch conditionings where only some have {name}")
    return torch.cat(list(values))  # type: ignore[arg-type]


def _cat_dicts(dicts: Sequence[dict[str, torch.Tensor]], name: str) -> dict[str, torch.Tensor]:
    keys = {tuple(sorted(d)) for d in dicts}
    if len(keys) != 1:
        raise ValueError(f"cannot batch conditionings with different {name} keys: {sorted(keys)}")
    return {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}


@dataclass
class Conditioning:
    """Per-sample denoiser inputs (row i belongs to sample i).

    Attributes:
        prompt_embeds: (B, L, D) text encoder states for the prompt.
        negative_prompt_embeds: (B, L, D) for the negative prompt; None means no guidance.
        added: extra UNet inputs (SDXL: `text_embeds` (B, P) pooled, `time_ids` (B, 6)).
        negative_added: the same for the negative branch.
        timestep_cond: (B, E) guidance-scale embedding of guidance-distilled UNets (LCM).
        extra_channels: (B, K, h, w) concatenated to the latents on the channel axis
            (inpainting UNets: mask and masked-image latents, K = 5).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    negative_added: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep_cond: torch.Tensor | None = None
    extra_channels: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        """True when the batch runs classifier-free guidance (an unconditional branch exists)."""
        return self.negative_prompt_embeds is not None

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]

    def with_(self, **changes) -> Conditioning:
        """A copy with some fields replaced (the original is never mutated)."""
        return replace(self, **changes)

    def as_guided(self) -> Conditioning:
        """The same conditioning in guided layout, for batching with guided jobs.

        The negative branch repeats the positive one, so ε(∅) = ε(c) and guidance at any scale
        gives ε(c) + w·0 = ε(c): the unguided result, at the cost of a second row.
        """
        if self.guided:
            return self
        return self.with_(negative_prompt_embeds=self.prompt_embeds, negative_added=dict(self.added))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Stack the conditionings of several jobs into one batch (all guided or none)."""
        if not parts:
            raise ValueError("need at least one conditioning to batch")
        if len({p.guided for p in parts}) != 1:
            raise ValueError(
                "cannot batch guided and unguided conditionings together; "
                "convert the unguided ones with as_guided()"
            )
        return Conditioning(
            prompt_embeds=torch.cat([p.prompt_embeds for p in parts]),
            negative_prompt_embeds=_cat_optional([p.negative_prompt_embeds for p in parts], "negative_prompt_embeds"),
            added=_cat_dicts([p.added for p in parts], "added"),
            negative_added=_cat_dicts([p.negative_added for p in parts], "negative_added"),
            timestep_cond=_cat_optional([p.timestep_cond for p in parts], "timestep_cond"),
            extra_channels=_cat_optional([p.extra_channels for p in parts], "extra_channels"),
        )

    def model_inputs(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None, int]:
        """(encoder states, added inputs, timestep_cond, copies) for one UNet call.

        Guided batches are laid out [negatives; positives] (2B rows), as Diffusers does.
        """
        if not self.guided:
            return self.prompt_embeds, self.added, self.timestep_cond, 1
        states = torch.cat([self.negative_prompt_embeds, self.prompt_embeds])  # type: ignore[list-item]
        added = {k: torch.cat([self.negative_added.get(k, v), v]) for k, v in self.added.items()}
        cond = None if self.timestep_cond is None else torch.cat([self.timestep_cond] * 2)
        return states, added, cond, 2
