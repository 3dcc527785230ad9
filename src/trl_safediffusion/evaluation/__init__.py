"""Evaluation: seeded generation for prompt sets (I2P, Hub datasets, files), NudeNet / Q16 / CLIP metrics and reports
(`results.json`, a per-image table, an image grid). NudeNet is the optional extra `[eval]` (AGPL-3.0).

The toy world's metric and prompt sets live in `trl_safediffusion.toy` (`toy.metrics.ToyWorldMetrics`,
`toy.prompts.toy_prompt_set`); `ToyWorldMetrics` and `toy_prompt_set` are still importable from here, loaded on first
use, so that importing `trl_safediffusion.evaluation` does not import the toy world.
"""

from ..image_grid import captioned_grid
from .clip_metrics import CLIPMetrics
from .evaluate import EvaluationResult, evaluate, flatten_scalars, inappropriate_summary, library_versions
from .generate import GenerationBatch, generate_images, image_seeds, iter_generate, load_pipeline
from .nudenet import (
    DEFAULT_NUDENET_THRESHOLD,
    EIGHT_CLASS_NUDENET_CLASSES,
    I2P_NUDENET_CLASSES,
    NINE_CLASS_NUDENET_CLASSES,
    NUDENET_CLASS_SETS,
    NudeNetMetric,
    count_nudenet,
    load_nudenet_detector,
)
from .prompts import I2P_CATEGORIES, I2P_DATASET_ID, PromptSet, filter_i2p, load_eval_prompts
from .q16 import Q16Classifier, load_q16_prompts

__all__ = [
    "CLIPMetrics",
    "DEFAULT_NUDENET_THRESHOLD",
    "EIGHT_CLASS_NUDENET_CLASSES",
    "EvaluationResult",
    "GenerationBatch",
    "I2P_CATEGORIES",
    "I2P_DATASET_ID",
    "I2P_NUDENET_CLASSES",
    "NINE_CLASS_NUDENET_CLASSES",
    "NUDENET_CLASS_SETS",
    "NudeNetMetric",
    "PromptSet",
    "Q16Classifier",
    "ToyWorldMetrics",
    "captioned_grid",
    "count_nudenet",
    "evaluate",
    "filter_i2p",
    "flatten_scalars",
    "generate_images",
    "image_seeds",
    "inappropriate_summary",
    "iter_generate",
    "library_versions",
    "load_eval_prompts",
    "load_nudenet_detector",
    "load_pipeline",
    "load_q16_prompts",
    "toy_prompt_set",
]

# moved to trl_safediffusion.toy; name -> (module, attribute), imported on first access
_TOY_EXPORTS = {
    "ToyWorldMetrics": ("trl_safediffusion.toy.metrics", "ToyWorldMetrics"),
    "toy_prompt_set": ("trl_safediffusion.toy.prompts", "toy_prompt_set"),
}


def __getattr__(name: str):
    if name in _TOY_EXPORTS:
        import importlib

        module, attribute = _TOY_EXPORTS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
