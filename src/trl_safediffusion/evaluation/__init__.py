"""Evaluation: seeded generation for prompt sets (I2P, files, the toy world), NudeNet / Q16 / CLIP / toy-world metrics
and reports (`results.json`, a per-image table, an image grid). NudeNet is the optional extra `[eval]` (AGPL-3.0)."""

from .clip_metrics import CLIPMetrics
from .evaluate import EvaluationResult, evaluate, flatten_scalars, inappropriate_summary, library_versions
from .generate import GenerationBatch, generate_images, image_seeds, iter_generate, load_pipeline
from .grid import captioned_grid
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
from .prompts import I2P_CATEGORIES, I2P_DATASET_ID, PromptSet, filter_i2p, load_eval_prompts, toy_prompt_set
from .q16 import Q16Classifier, load_q16_prompts
from .toy_metrics import ToyWorldMetrics

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
