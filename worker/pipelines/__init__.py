"""Diffusion pipelines: loading in the Diffusers layout, and the denoising stages Kiln runs."""

from worker.pipelines.conditioning import Conditioning
from worker.pipelines.ddpm import DDPMPipeline
from worker.pipelines.flux import FluxPipeline
from worker.pipelines.flux_img2img import FluxImg2ImgPipeline, FluxInpaintPipeline
from worker.pipelines.img2img import StableDiffusionImg2ImgPipeline
from worker.pipelines.inpaint import StableDiffusionInpaintPipeline
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.pipeline_utils import DiffusionPipeline
from worker.pipelines.sd3 import StableDiffusion3Pipeline
from worker.pipelines.sd3_img2img import StableDiffusion3Img2ImgPipeline
from worker.pipelines.sdxl import StableDiffusionXLPipeline
from worker.pipelines.stable_diffusion import Sampling, StableDiffusionPipeline

__all__ = [
    "Conditioning",
    "DDPMPipeline",
    "DiffusionPipeline",
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "FluxPipeline",
    "ImagePipelineOutput",
    "Sampling",
    "StableDiffusion3Img2ImgPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
]
