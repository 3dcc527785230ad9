"""trl-safediffusion: TRL's diffusion RL conventions, maintained, plus SafeDiffusion-R1's online GRPO
(`SafeDDPOGRPOTrainer`) and its CLIP steering reward.

Public names are imported lazily so that `import trl_safediffusion` stays fast and optional extras stay optional.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DDPOConfig": ".ddpo_config",
    "DDPOTrainer": ".ddpo_trainer",
    "RewardFunctionError": ".reward_stats",
    "PerPromptStatTracker": ".advantages",
    "SafeDDPOGRPOConfig": ".grpo_config",
    "SafeDDPOGRPOTrainer": ".grpo_trainer",
    "group_advantages": ".advantages",
    "DDPOStableDiffusionPipeline": ".pipelines",
    "DefaultDDPOStableDiffusionPipeline": ".pipelines",
    "DefaultDDPOStableDiffusion3Pipeline": ".pipelines",
    "DefaultDDPOStableDiffusionXLPipeline": ".pipelines",
    "DefaultDDPOFluxPipeline": ".pipelines",
    "load_ddpo_pipeline": ".pipelines",
    "DDPOPipelineOutput": ".pipelines",
    "RolloutOutput": ".pipelines",
    "StepDistribution": ".pipelines",
    "DDPOSchedulerOutput": ".schedulers",
    "ddim_step_with_logprob": ".schedulers",
    "flow_sde_step_with_logprob": ".schedulers",
    "load_prompt_dataset": ".data",
    "mix_prompts": ".data",
    "CLIPSteeringReward": ".rewards",
    "CombinedReward": ".rewards",
    "AnchorSet": ".rewards",
    "ANCHOR_PRESETS": ".rewards",
    "get_anchor_preset": ".rewards",
    "load_anchors": ".rewards",
    "steering_sweep": ".rewards",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_safediffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
