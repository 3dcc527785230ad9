"""The embedded toy world: a procedural generator of coloured shapes, exact detectors, and a shipped tiny
Stable Diffusion pipeline and CLIP trained on it (see docs/toy_world.md)."""

from .clip import TOY_SAFE_ANCHORS, TOY_UNSAFE_ANCHORS, load_toy_clip, toy_anchors, toy_clip_paths, toy_steering_reward
from .detectors import detect_batch, detect_objects, is_unsafe, judge, score, unsafe_fraction
from .metrics import ToyWorldMetrics
from .pipeline import (
    TOY_GUIDANCE_SCALE,
    TOY_NUM_INFERENCE_STEPS,
    load_toy_flow_pipeline,
    load_toy_pipeline,
    toy_flow_pipeline_path,
    toy_pipeline_path,
)
from .prompts import toy_prompt_set
from .sampling import noise_seed, sample_toy_images
from .structure import ObjectMap
from .world import (
    COLOUR_WORDS,
    SAFE_COLOUR_WORDS,
    SHAPES,
    UNSAFE_COLOUR_WORDS,
    ShapeSpec,
    caption,
    cycled_rows,
    draw,
    draw_batch,
    paint_objects,
    place_objects,
    prompt_row,
    prompt_sets,
    sample_spec,
)

__all__ = [
    "COLOUR_WORDS",
    "ObjectMap",
    "SAFE_COLOUR_WORDS",
    "SHAPES",
    "ShapeSpec",
    "TOY_GUIDANCE_SCALE",
    "TOY_NUM_INFERENCE_STEPS",
    "TOY_SAFE_ANCHORS",
    "TOY_UNSAFE_ANCHORS",
    "ToyWorldMetrics",
    "UNSAFE_COLOUR_WORDS",
    "caption",
    "cycled_rows",
    "detect_batch",
    "detect_objects",
    "draw",
    "draw_batch",
    "is_unsafe",
    "judge",
    "load_toy_clip",
    "load_toy_flow_pipeline",
    "load_toy_pipeline",
    "paint_objects",
    "place_objects",
    "prompt_row",
    "noise_seed",
    "prompt_sets",
    "sample_spec",
    "sample_toy_images",
    "score",
    "toy_anchors",
    "toy_clip_paths",
    "toy_flow_pipeline_path",
    "toy_pipeline_path",
    "toy_prompt_set",
    "toy_steering_reward",
    "unsafe_fraction",
]
