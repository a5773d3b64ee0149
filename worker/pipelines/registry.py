"""The pipeline classes `model_index.json` may name, by their Diffusers class names."""

from __future__ import annotations

import functools

from worker.pipelines.pipeline_utils import DiffusionPipeline


class UnsupportedPipelineError(ValueError):
    """`model_index.json` names a pipeline class Kiln does not implement."""


@functools.cache
def pipeline_registry() -> dict[str, type[DiffusionPipeline]]:
    """Diffusers pipeline class name -> Kiln class (imported on first use to avoid cycles)."""
    from worker.pipelines.ddpm import DDPMPipeline
    from worker.pipelines.flux import FluxPipeline
    from worker.pipelines.flux_img2img import FluxImg2ImgPipeline, FluxInpaintPipeline
    from worker.pipelines.img2img import StableDiffusionImg2ImgPipeline
    from worker.pipelines.inpaint import StableDiffusionInpaintPipeline
    from worker.pipelines.sd3 import StableDiffusion3Pipeline
    from worker.pipelines.sd3_img2img import StableDiffusion3Img2ImgPipeline
    from worker.pipelines.sdxl import StableDiffusionXLPipeline
    from worker.pipelines.stable_diffusion import StableDiffusionPipeline

    classes = (
        DDPMPipeline,
        StableDiffusionPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLPipeline,
        FluxPipeline,
        FluxImg2ImgPipeline,
        FluxInpaintPipeline,
        StableDiffusion3Pipeline,
        StableDiffusion3Img2ImgPipeline,
    )
    return {cls.__name__: cls for cls in classes}


def pipeline_class(name: str) -> type[DiffusionPipeline]:
    """The Kiln class for a `_class_name`, or an error that lists what Kiln supports."""
    registry = pipeline_registry()
    if name not in registry:
        raise UnsupportedPipelineError(
            f"pipeline class {name!r} is not supported by Kiln; supported: {sorted(registry)} "
            "(or pass custom_pipeline=...)"
        )
    return registry[name]
