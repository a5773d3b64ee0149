"""Diffusion pipelines: loading in the Diffusers layout, and the denoising stages Kiln runs."""

from worker.pipelines.ddpm import DDPMPipeline
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.pipeline_utils import DiffusionPipeline

__all__ = [
    "DDPMPipeline",
    "DiffusionPipeline",
    "ImagePipelineOutput",
]
