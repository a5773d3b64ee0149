"""Kiln's diffusion models, loaded from Diffusers-layout checkpoints."""

from worker.models.autoencoder_kl import AutoencoderKL
from worker.models.distributions import DiagonalGaussianDistribution
from worker.models.errors import ModelConfigError, ModelLoadError
from worker.models.modeling import ModelMixin
from worker.models.transformer_flux import FluxTransformer2DModel
from worker.models.transformer_outputs import Transformer2DModelOutput
from worker.models.transformer_sd3 import SD3Transformer2DModel
from worker.models.unet_2d import UNet2DModel
from worker.models.unet_2d_condition import UNet2DConditionModel

__all__ = ["AutoencoderKL", "DiagonalGaussianDistribution", "FluxTransformer2DModel", "ModelConfigError",
           "ModelLoadError", "ModelMixin", "SD3Transformer2DModel", "Transformer2DModelOutput",
           "UNet2DConditionModel", "UNet2DModel"]
