"""Transformer blocks of MMDiT models (SD3, FLUX): double-stream (joint) and single-stream blocks.

Double-stream block (Esser et al., 2024): image tokens x and text tokens c each get adaLN-Zero
modulation from the conditioning vector, attend jointly, and run their own gelu-tanh MLP:

    x += gate_msa * attn_x;   x += gate_mlp * ff(modulate(norm(x)))        (same for c)

SD3's last block is `context_pre_only`: c is only read (continuous adaLN, no c output). SD3.5's
MMDiT-X blocks (`use_dual_attention`) add a second self-attention on x. FLUX's single-stream
block runs attention and MLP in parallel on [c, x] concatenated (Dehghani et al., 2023).
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from worker.models.feed_forward import GELUFeedForward
from worker.models.joint_attention import JointAttention
from worker.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroX, modulate

FP16_MAX = 65504.0
Rope = tuple[torch.Tensor, torch.Tensor]


def run_block(block: nn.Module, checkpointing: bool, *args) -> tuple:
    """block(*args); with `checkpointing` and autograd on, its activations are recomputed in backward."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def clip_fp16(x: torch.Tensor) -> torch.Tensor:
    """Keep fp16 activations finite (FLUX's residual streams overflow fp16 otherwise)."""
    return x.clip(-FP16_MAX, FP16_MAX) if x.dtype == torch.float16 else x


class JointTransformerBlock(nn.Module):
    """(x (B, N, D), c (B, M, D), temb (B, D)) -> (c', x'); c' is None for a `context_pre_only` block.

    Args:
        qk_norm: norm on q/k per head: True/"rms_norm", "layer_norm", or False/None for none.
        context_pre_only: the last SD3 block: no context output, no context MLP.
        use_dual_attention: SD3.5 MMDiT-X: a second self-attention (`attn2`) on x.
        init_order: creation order of the attention projections (`"flux"` or `"sd3"`).
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, qk_norm: bool | str | None = False,
                 context_pre_only: bool = False, use_dual_attention: bool = False, init_order: str = "sd3"):
        super().__init__()
        self.context_pre_only = context_pre_only
        heads = dict(heads=num_attention_heads, dim_head=attention_head_dim, qk_norm=qk_norm, init_order=init_order)
        self.norm1 = AdaLayerNormZeroX(dim) if use_dual_attention else AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormContinuous(dim, dim) if context_pre_only else AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, context_dim=dim, context_out_proj=not context_pre_only, **heads)
        self.attn2 = JointAttention(dim, **heads) if use_dual_attention else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = GELUFeedForward(dim)
        self.norm2_context = None if context_pre_only else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = None if context_pre_only else GELUFeedForward(dim)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                rope: Rope | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        x, c = hidden_states, encoder_hidden_states
        x_mod = self.norm1(x, temb)  # (x_attn, gate, shift_mlp, scale_mlp, gate_mlp[, x_attn2, gate2])
        if self.context_pre_only:
            c_attn, c_mod = self.norm1_context(c, temb), None
        else:
            c_attn, *c_mod = self.norm1_context(c, temb)
        attn_x, attn_c = self.attn(x_mod[0], c_attn, rope)
        x = torch.addcmul(x, x_mod[1][:, None], attn_x)  # x + gate * attn
        if self.attn2 is not None:
            x = torch.addcmul(x, x_mod[6][:, None], self.attn2(x_mod[5])[0])
        x = self._mlp(x, self.norm2, self.ff, *x_mod[2:5])
        if c_mod is None:
            return None, x
        c = torch.addcmul(c, c_mod[0][:, None], attn_c)
        c = clip_fp16(self._mlp(c, self.norm2_context, self.ff_context, *c_mod[1:4]))
        return c, x

    @staticmethod
    def _mlp(x: torch.Tensor, norm: nn.Module, ff: nn.Module, shift: torch.Tensor, scale: torch.Tensor,
             gate: torch.Tensor) -> torch.Tensor:
        """x + gate * ff(modulate(norm(x), shift, scale))."""
        return torch.addcmul(x, gate[:, None], ff(modulate(norm(x), shift, scale)))


class SingleTransformerBlock(nn.Module):
    """FLUX single-stream block on the joint sequence [c, x] (B, M + N, D):

    h = modulate(norm(s)); s += gate * proj_out([attn(h), gelu_tanh(proj_mlp(h))]).
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZero(dim, num_params=3)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = JointAttention(dim, num_attention_heads, attention_head_dim, qk_norm=True, out_proj=False)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                rope: Rope | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        M = encoder_hidden_states.shape[1]
        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # (B, M + N, D)
        h, gate = self.norm(joint, temb)
        mlp = self.act_mlp(self.proj_mlp(h))
        attn, _ = self.attn(h, rope=rope)
        joint = clip_fp16(torch.addcmul(joint, gate[:, None], self.proj_out(torch.cat([attn, mlp], dim=2))))
        return joint[:, :M], joint[:, M:]
