"""Rewards: the SafeDiffusion-R1 CLIP steering reward, anchor presets, reward composition and the alpha sweep."""

from .clip_steering import (
    ANCHOR_PRESETS,
    AnchorSet,
    CLIPSteeringReward,
    OpenCLIPBackend,
    PreprocessSpec,
    TransformersCLIPBackend,
    get_anchor_preset,
    load_anchors,
    preprocess_images,
)
from .combine import CombinedReward
from .sweep import SweepResult, SweepRow, steering_sweep

__all__ = [
    "ANCHOR_PRESETS",
    "AnchorSet",
    "CLIPSteeringReward",
    "CombinedReward",
    "OpenCLIPBackend",
    "PreprocessSpec",
    "SweepResult",
    "SweepRow",
    "TransformersCLIPBackend",
    "get_anchor_preset",
    "load_anchors",
    "preprocess_images",
    "steering_sweep",
]
