from .stable_diffusion import (
    DDPOPipelineOutput,
    DDPOStableDiffusionPipeline,
    DefaultDDPOStableDiffusionPipeline,
    RolloutOutput,
)

__all__ = ["DDPOPipelineOutput", "DDPOStableDiffusionPipeline", "DefaultDDPOStableDiffusionPipeline", "RolloutOutput"]
