"""A diffusers `StableDiffusionPipeline` seen as the library pipeline, so that [`save_pipeline_for_hub`] writes LoRA
weights with [`DefaultDDPOStableDiffusionPipeline.save_lora`] rather than a copy of it. Imported lazily: it needs
torch and diffusers."""

from __future__ import annotations

from ..pipelines.stable_diffusion import DefaultDDPOStableDiffusionPipeline


class DiffusersPipelineView(DefaultDDPOStableDiffusionPipeline):
    r"""
    The saving methods of [`DefaultDDPOStableDiffusionPipeline`] over a plain diffusers pipeline. The parent's
    constructor is not run on purpose: it sets a pipeline up for training (DDIM scheduler, frozen components, new LoRA
    adapters), and a pipeline that is only being saved must stay as it is.

    Args:
        sd_pipeline (`diffusers.StableDiffusionPipeline`): the pipeline, its UNet carrying the peft adapter
            `"default"` when LoRA weights are saved.
        use_lora (`bool`, *optional*, defaults to `True`): whether the UNet was trained with LoRA adapters.
    """

    def __init__(self, sd_pipeline, use_lora: bool = True):
        self.sd_pipeline = sd_pipeline
        self.use_lora = use_lora
