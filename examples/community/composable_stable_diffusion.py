"""Composable Stable Diffusion: one image from several prompts joined with "|", each weighted.

Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models", eq. 10
(the conjunction operator):

    ε̂ = ε(x, ∅) + Σ_i w_i · g · (ε(x, c_i) − ε(x, ∅))

with g the guidance scale. A negative weight pushes the image away from that prompt (their
"NOT"). With one prompt of weight 1 this is plain classifier-free guidance.

Load it on any Stable Diffusion checkpoint:

    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="examples/community/composable_stable_diffusion.py")
    image = pipe("a red cat | a snowy forest", weights="1 | 0.5").images[0]

It is built only from the public stages of `StableDiffusionPipeline` (encode_prompt,
new_scheduler, prepare_latents, denoise_step, finish), which is how community pipelines
should extend Kiln.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.pipelines import Conditioning, StableDiffusionPipeline
from worker.pipelines.stable_diffusion import scheduler_step_kwargs


def split_prompt(prompt: str, weights: str | Sequence[float] | None) -> tuple[list[str], list[float]]:
    """"a | b" and "1 | 0.5" -> (["a", "b"], [1.0, 0.5]); weights default to 1 each."""
    parts = [p.strip() for p in prompt.split("|")]
    if any(not p for p in parts):
        raise ValueError(f"empty sub-prompt in {prompt!r}; write prompts as 'a red cat | a forest'")
    if weights is None:
        values = [1.0] * len(parts)
    elif isinstance(weights, str):
        try:
            values = [float(w) for w in weights.split("|")]
        except ValueError:
            raise ValueError(f"weights must be numbers separated by '|', got {weights!r}") from None
    else:
        values = [float(w) for w in weights]
    if len(values) != len(parts):
        raise ValueError(f"got {len(values)} weights for {len(parts)} prompts")
    return parts, values


class ComposableStableDiffusionPipeline(StableDiffusionPipeline):
    """Weighted conjunction of prompts (Composable Diffusion) on the Stable Diffusion components."""

    def composed_noise(self, latents: torch.Tensor, t: Any, scheduler: Any, cond: Conditioning,
                       weights: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """ε̂ for one image (1, 4, h, w) from K prompts: one UNet call on K + 1 rows [∅, c_1..c_K]."""
        model_input = scheduler.scale_model_input(latents, t)
        rows = cond.batch_size  # K + 1: the unconditional row first
        eps = self.denoise_step(model_input.expand(rows, -1, -1, -1), t, cond)  # unguided: raw ε per row
        uncond, conds = eps[:1], eps[1:]
        weights = weights.to(eps.dtype).view(-1, 1, 1, 1)
        return uncond + guidance_scale * (weights * (conds - uncond)).sum(dim=0, keepdim=True)

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        prompt: str,
        weights: str | Sequence[float] | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Any:
        """Generate one image for the weighted conjunction of the "|"-separated prompts."""
        parts, values = split_prompt(prompt, weights)
        height, width = self.default_size(height, width)
        texts = [negative_prompt or "", *parts]
        cond = self.encode_prompt(texts, guided=False)  # (K + 1, L, D), no negatives attached
        scheduler = self.new_scheduler(num_inference_steps)
        x = self.prepare_latents(scheduler, 1, height, width, generator, latents, cond.prompt_embeds.dtype)
        step_weights = torch.tensor(values)
        step_kwargs = scheduler_step_kwargs(scheduler, generator, eta=0.0)
        for t in scheduler.timesteps:
            noise = self.composed_noise(x, t, scheduler, cond, step_weights, guidance_scale)
            x = scheduler.step(noise, t, x, **step_kwargs).prev_sample
        return self.finish(x, output_type, return_dict)
