"""Rewards: the SafeDiffusion-R1 CLIP steering reward, anchor presets, reward composition and the alpha sweep.

One stage per module: `anchors` (phrases and `v_safe`), `preprocess` (torch image preprocessing), `backends` (open_clip
and transformers CLIP), `clip_steering` (the reward), `combine` (weighted sums) and `sweep` (reward versus alpha).
"""

from .anchors import ANCHOR_PRESETS, AnchorSet, compute_v_safe, get_anchor_preset, load_anchors
from .backends import OpenCLIPBackend, TransformersCLIPBackend
from .clip_steering import CLIPSteeringReward
from .combine import CombinedReward
from .preprocess import PreprocessSpec, preprocess_images
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
    "compute_v_safe",
    "get_anchor_preset",
    "load_anchors",
    "preprocess_images",
    "steering_sweep",
]
