"""The model interface (`base`) and its adapters, one per model family."""

from .base import DDPOPipelineOutput, DDPOStableDiffusionPipeline, RolloutOutput, StepDistribution
from .conditioning import Conditioning
from .flux import DefaultDDPOFluxPipeline
from .loading import MODEL_FAMILIES, ModelFamily, load_ddpo_pipeline, model_family
from .stable_diffusion import DefaultDDPOStableDiffusionPipeline
from .stable_diffusion_3 import DefaultDDPOStableDiffusion3Pipeline
from .stable_diffusion_xl import DefaultDDPOStableDiffusionXLPipeline

__all__ = [
    "Conditioning",
    "DDPOPipelineOutput",
    "DDPOStableDiffusionPipeline",
    "DefaultDDPOFluxPipeline",
    "DefaultDDPOStableDiffusion3Pipeline",
    "DefaultDDPOStableDiffusionPipeline",
    "DefaultDDPOStableDiffusionXLPipeline",
    "MODEL_FAMILIES",
    "ModelFamily",
    "RolloutOutput",
    "StepDistribution",
    "load_ddpo_pipeline",
    "model_family",
]
