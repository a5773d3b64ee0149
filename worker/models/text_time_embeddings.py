"""The conditioning vector of FLUX and SD3: timestep (+ guidance) embedding + pooled-text projection.

temb = MLP(sinusoid_256(t)) [+ MLP(sinusoid_256(g))] + MLP(pooled_text), one vector per row, so
rows of different jobs (different t, g, prompts) share one model call. Diffusers' names:
`time_proj`, `timestep_embedder`, `guidance_embedder`, `text_embedder.linear_{1,2}`.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.models.activations import get_activation
from worker.models.embeddings import TimestepEmbedding, Timesteps, timesteps_for_batch

TIME_FEATURES = 256


class TextProjection(nn.Module):
    """Two-layer MLP on pooled text embeddings: linear_1 -> act -> linear_2, (B, in) -> (B, out)."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int | None = None, act_fn: str = "silu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act_1 = get_activation(act_fn)
        self.linear_2 = nn.Linear(hidden_size, out_features or hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class CombinedTimestepTextProjEmbeddings(nn.Module):
    """(timestep (B,), [guidance (B,)], pooled text (B, P)) -> conditioning (B, D).

    Args:
        embedding_dim: D, the transformer width.
        pooled_projection_dim: P, width of the pooled text embedding.
        guidance_embeds: also embed a guidance scale (FLUX.1-dev's distilled guidance).
    """

    def __init__(self, embedding_dim: int, pooled_projection_dim: int, guidance_embeds: bool = False):
        super().__init__()
        self.time_proj = Timesteps(TIME_FEATURES, flip_sin_to_cos=True, freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(TIME_FEATURES, embedding_dim)
        self.guidance_embedder = TimestepEmbedding(TIME_FEATURES, embedding_dim) if guidance_embeds else None
        self.text_embedder = TextProjection(pooled_projection_dim, embedding_dim, act_fn="silu")

    def forward(self, timestep: torch.Tensor, pooled_projection: torch.Tensor,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        if (guidance is None) != (self.guidance_embedder is None):
            raise ValueError("guidance must be given exactly when the model has guidance_embeds "
                             f"(guidance_embeds={self.guidance_embedder is not None}, "
                             f"guidance given={guidance is not None})")
        emb = self._embed(self.timestep_embedder, timestep, pooled_projection)
        if guidance is not None:
            emb = emb + self._embed(self.guidance_embedder, guidance, pooled_projection)
        return emb + self.text_embedder(pooled_projection)

    def _embed(self, mlp: TimestepEmbedding, values: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Scalar or (B,) values -> (B, D) through the sinusoid features and `mlp`."""
        values = timesteps_for_batch(values, pooled.shape[0], pooled.device)
        return mlp(self.time_proj(values).to(pooled.dtype))
