"""Shared builders for the reward tests: tiny CLIP models built from configs (offline), cached per process."""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.cache
def open_clip_parts():
    """(model, tokenizer, eval transform) of the tiny open_clip model (32 px, embed_dim 32), seed 0."""
    from trl_safediffusion.testing_utils import tiny_open_clip

    return tiny_open_clip(seed=0)


@functools.cache
def transformers_parts():
    """(CLIPModel, CLIPTokenizer, CLIPImageProcessor) of the tiny transformers CLIP (32 px), seed 0."""
    from trl_safediffusion.testing_utils import tiny_transformers_clip

    return tiny_transformers_clip(seed=0)


class CountingBackend:
    """Wraps a real backend and records every list of texts sent to its text encoder."""

    def __init__(self, backend):
        self.backend = backend
        self.preprocess_spec = backend.preprocess_spec
        self.text_calls: list[list[str]] = []

    def encode_text(self, texts):
        self.text_calls.append(list(texts))
        return self.backend.encode_text(texts)

    def encode_image(self, pixels):
        return self.backend.encode_image(pixels)

    @property
    def encoded_texts(self) -> list[str]:
        return [t for call in self.text_calls for t in call]


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1], quantised to k/255 so a PIL round trip of the input itself is exact."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 4 + 1, width // 4 + 1, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    x = 0.7 * smooth + 0.3 * torch.rand(batch, 3, height, width, generator=gen)
    return (x.clamp(0, 1) * 255).round() / 255


def to_pil(images: torch.Tensor):
    from PIL import Image

    arrays = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]
