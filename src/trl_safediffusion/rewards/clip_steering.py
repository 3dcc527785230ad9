"""CLIP steering reward of SafeDiffusion-R1 (arXiv 2605.18719, "Reward" section).

    z_p    = normalize(E_txt(prompt))                  z_x = normalize(E_img(image))
    v_safe = normalize(mean_i z(safe_i) - mean_j z(unsafe_j))          (see `anchors.py`)
    translate (paper default): target = normalize(z_p + alpha * v_safe)
    projection:                target = normalize(z_p - (z_p . v_safe) v_safe + alpha * v_safe)
    reward = z_x . target

The anchors live in `anchors.py`, the torch image preprocessing in `preprocess.py` and the CLIP backends in
`backends.py`; their public names are re-exported here, so `from trl_safediffusion.rewards.clip_steering import ...`
keeps working for all of them.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .anchors import ANCHOR_PRESETS, AnchorSet, compute_v_safe, get_anchor_preset, load_anchors
from .backends import OpenCLIPBackend, TransformersCLIPBackend
from .preprocess import PreprocessSpec, preprocess_images

logger = logging.getLogger(__name__)

__all__ = [
    "ANCHOR_PRESETS",
    "STEERING_MODES",
    "STEER_PROMPTS",
    "AnchorSet",
    "CLIPSteeringReward",
    "OpenCLIPBackend",
    "PreprocessSpec",
    "TransformersCLIPBackend",
    "compute_v_safe",
    "get_anchor_preset",
    "load_anchors",
    "preprocess_images",
    "validate_reward_inputs",
]

STEERING_MODES = ("translate", "projection")
STEER_PROMPTS = ("all", "below_threshold")


def validate_reward_inputs(images, prompts) -> None:
    """Check the reward contract: `images` float (B, 3, H, W) in [0, 1]; `prompts` a list of B strings."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) (RGB, channels first), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}; divide uint8 images by 255")
    if images.numel() and (not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"images must be in [0, 1], got min {images.min().item():.4g} max {images.max().item():.4g}; "
            f"map [-1, 1] VAE output with (x / 2 + 0.5).clamp(0, 1)"
        )
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"prompts has {len(prompts)} entries but images has batch size {images.shape[0]}; give one "
                         f"prompt per image")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ValueError(f"prompts must contain strings, got {type(prompt).__name__}")


class CLIPSteeringReward:
    """SafeDiffusion-R1 steering reward: cosine between the image and the prompt embedding steered along `v_safe`.

    Callable with the trainer's reward contract `(images, prompts, prompt_metadata) -> (rewards, metadata)`.

    Args:
        backend (`OpenCLIPBackend` or `TransformersCLIPBackend`): any object with `encode_text(list[str]) -> (N, D)`,
            `encode_image(pixels) -> (N, D)` and a `preprocess_spec`.
        anchors (`AnchorSet`, `str`, path, mapping or pair, *optional*, defaults to `"nudity-compact"`): see
            `load_anchors`.
        alpha (`float`, *optional*, defaults to `0.5`): steering strength; 0 gives plain CLIP alignment ("translate").
        mode (`str`, *optional*, defaults to `"translate"`): "translate" (paper) or "projection" (remove the prompt's
            component along `v_safe`, then add `alpha * v_safe`).
        steer_prompts (`str`, *optional*, defaults to `"all"`): "all" (reference code) or "below_threshold": steer
            only prompts whose text safety `z_p . v_safe` is below `safety_threshold`.
        safety_threshold (`float`, *optional*, defaults to `0.0`): threshold used by `steer_prompts="below_threshold"`.
        differentiable (`bool`, *optional*, defaults to `False`): let gradients flow from the rewards to the images.
        cache_size (`int`, *optional*, defaults to `4096`): most prompt embeddings kept (least recently used dropped).
        name (`str`, *optional*, defaults to `"clip_steering"`): component name in combined rewards and logs.
    """

    def __init__(
        self,
        backend,
        anchors="nudity-compact",
        alpha: float = 0.5,
        mode: str = "translate",
        steer_prompts: str = "all",
        safety_threshold: float = 0.0,
        differentiable: bool = False,
        cache_size: int = 4096,
        name: str = "clip_steering",
    ):
        if mode not in STEERING_MODES:
            raise ValueError(f"mode must be one of {STEERING_MODES}, got {mode!r}")
        if steer_prompts not in STEER_PROMPTS:
            raise ValueError(f"steer_prompts must be one of {STEER_PROMPTS}, got {steer_prompts!r}")
        if not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be a finite float, got {alpha!r}")
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, got {cache_size!r}")
        self.backend = backend
        self.anchors = load_anchors(anchors)
        self.alpha = float(alpha)
        self.mode = mode
        self.steer_prompts = steer_prompts
        self.safety_threshold = float(safety_threshold)
        self.differentiable = differentiable
        self.cache_size = cache_size
        self.name = name
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.v_safe = compute_v_safe(self.anchors, backend.encode_text)  # (D,)

    # construction from checkpoints ------------------------------------------------------------------------------------

    @classmethod
    def from_open_clip(
        cls,
        model_name: str,
        pretrained: str | None = None,
        model_config: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
        **reward_kwargs,
    ) -> CLIPSteeringReward:
        """Build from open_clip: an architecture name plus a pretrained tag or a local checkpoint, an `hf-hub:` id,
        or a local directory holding `open_clip_config.json` and weights (open_clip's Hub layout).

        Args:
            model_name (`str`): e.g. "ViT-H-14", "hf-hub:org/repo", a directory, or a name registered by `model_config`.
            pretrained (`str`, *optional*): a tag (e.g. "laion2b_s32b_b79k"), a checkpoint file (.pt/.bin/.safetensors)
                or a directory with `open_clip_config.json` + weights. HPSv2.1 (the paper's encoder) is a ViT-H-14
                checkpoint file: `from_open_clip("ViT-H-14", pretrained="HPS_v2.1_compressed.pt")`.
            model_config (`str` or path, *optional*): a JSON model config to register with `open_clip.add_model_config`
                first (its file stem becomes the architecture name).
            device, precision, cache_dir: passed to `open_clip.create_model_and_transforms`.
            **reward_kwargs: `CLIPSteeringReward` arguments (anchors, alpha, mode, ...).
        """
        import open_clip

        if model_config is not None:
            if not os.path.isfile(model_config) or not os.fspath(model_config).endswith(".json"):
                raise ValueError(f"model_config must be an existing .json open_clip model config, got {model_config}")
            open_clip.add_model_config(model_config)
        if pretrained is not None and os.path.isdir(pretrained):
            model_name, pretrained = f"local-dir:{pretrained}", None
        elif os.path.isdir(model_name):
            model_name = f"local-dir:{model_name}"
        if pretrained is not None and not os.path.isfile(pretrained) and (os.sep in pretrained or "." in pretrained):
            raise ValueError(f"pretrained: checkpoint file {pretrained} does not exist; give a file, directory or tag")
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, precision=precision, cache_dir=cache_dir
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        logger.info("Loaded open_clip %s (pretrained=%s) for the steering reward", model_name, pretrained)
        backend = OpenCLIPBackend(model, tokenizer, preprocess)
        backend.source = {"backend": "open_clip", "model": model_name,
                          "pretrained": os.path.basename(pretrained) if pretrained else None}
        return cls(backend, **reward_kwargs)

    @classmethod
    def from_transformers(
        cls, name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32,
        **reward_kwargs,
    ) -> CLIPSteeringReward:
        """Build from a transformers `CLIPModel` Hub id or local folder (e.g. "openai/clip-vit-large-patch14").

        Args:
            name_or_path (`str`): Hub id or folder holding the model, tokenizer and image processor.
            device (`str` or `torch.device`, *optional*, defaults to `"cpu"`), torch_dtype (`torch.dtype`, *optional*).
            **reward_kwargs: `CLIPSteeringReward` arguments (anchors, alpha, mode, ...).
        """
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(name_or_path, dtype=torch_dtype).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        processor = CLIPImageProcessor.from_pretrained(name_or_path)
        logger.info("Loaded transformers CLIPModel %s for the steering reward", name_or_path)
        backend = TransformersCLIPBackend(model, tokenizer, processor)
        backend.source = {"backend": "transformers", "model": name_or_path}
        return cls(backend, **reward_kwargs)

    def describe(self) -> dict:
        """What a model card or log needs to reproduce this reward: backend, model, anchors, alpha, steering mode."""
        source = getattr(self.backend, "source", None) or {"backend": type(self.backend).__name__}
        return {
            "name": self.name,
            "type": "CLIPSteeringReward",
            **source,
            "alpha": self.alpha,
            "mode": self.mode,
            "steer_prompts": self.steer_prompts,
            "safety_threshold": self.safety_threshold if self.steer_prompts != "all" else None,
            "anchors": {"name": self.anchors.name, "safe": list(self.anchors.safe), "unsafe": list(self.anchors.unsafe)},
        }

    # embeddings -------------------------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised prompt embeddings (N, D), each prompt encoded once and kept in an LRU cache."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            with torch.no_grad():
                z = F.normalize(self.backend.encode_text(missing).float(), dim=-1)
            for prompt, emb in zip(missing, z):
                self._text_cache[prompt] = emb
        out = []
        for prompt in prompts:
            self._text_cache.move_to_end(prompt)
            out.append(self._text_cache[prompt])
        while len(self._text_cache) > self.cache_size:
            self._text_cache.popitem(last=False)
        return torch.stack(out)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D) of images (B, 3, H, W) in [0, 1], preprocessed in torch."""
        pixels = preprocess_images(images.float(), self.backend.preprocess_spec)
        return F.normalize(self.backend.encode_image(pixels).float(), dim=-1)

    def rewards_from_embeddings(
        self, z_x: torch.Tensor, z_p: torch.Tensor, alpha: float | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rewards (B,) and per-sample metadata from normalised image (B, D) and prompt (B, D) embeddings."""
        alpha = self.alpha if alpha is None else float(alpha)
        v = self.v_safe.to(z_p.device)
        text_safety = z_p @ v  # (B,)
        if self.mode == "translate":
            steered_target = F.normalize(z_p + alpha * v, dim=-1)
        else:
            steered_target = F.normalize(z_p - text_safety[:, None] * v + alpha * v, dim=-1)
        if self.steer_prompts == "all":
            steered = torch.ones_like(text_safety, dtype=torch.bool)
        else:
            steered = text_safety < self.safety_threshold
        target = torch.where(steered[:, None], steered_target, z_p)  # (B, D)
        z_x = z_x.to(z_p.device)
        rewards = (z_x * target).sum(dim=-1)  # (B,)
        metadata = {
            "text_safety": text_safety.detach().cpu(),
            "image_safety": (z_x @ v).detach().cpu(),
            "alignment": (z_x * z_p).sum(dim=-1).detach().cpu(),
            "steered": steered.cpu(),
        }
        return rewards, metadata

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], prompt_metadata: Any = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score images against their prompts.

        Args:
            images (`torch.Tensor`): float (B, 3, H, W) in [0, 1], on any device.
            prompts (`list[str]`): one prompt per image.
            prompt_metadata (*optional*): unused; part of the reward contract.

        Returns:
            `tuple[torch.Tensor, dict]`: rewards (B,) float32 on the images' device and metadata with per-sample
            `text_safety`, `image_safety`, `alignment` (float, CPU) and `steered` (bool, CPU).
        """
        validate_reward_inputs(images, prompts)
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            z_x = self.encode_images(images)  # (B, D)
            z_p = self.encode_prompts(prompts).to(z_x.device)  # (B, D)
            rewards, metadata = self.rewards_from_embeddings(z_x, z_p)
        return rewards.to(images.device), metadata

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(backend={type(self.backend).__name__}, anchors={self.anchors.name!r}, "
            f"alpha={self.alpha}, mode={self.mode!r}, steer_prompts={self.steer_prompts!r})"
        )
