"""Torch preprocessing against each backend's own PIL-based transform on images that need resizing and cropping.

Tolerance: PIL resizes uint8 images and rounds the result to uint8 (up to 0.5/255 error), and its bicubic filter
differs slightly from torch's antialiased bicubic, so pixels may differ by up to about 1/255. We assert, in [0, 1]
pixel units (the normalised difference times std), max |diff| <= 1.5/255 and mean |diff| <= 0.5/255.
"""

from __future__ import annotations

import pytest
import torch
from open_clip.transform import image_transform

from reward_fixtures import random_images, to_pil
from trl_safediffusion.rewards import PreprocessSpec, preprocess_images

MAX_TOL = 1.5 / 255
MEAN_TOL = 0.5 / 255
SIZES = [(45, 61), (77, 50), (20, 28), (33, 97)]  # downscale, portrait, upscale, very wide


def _pixel_diff(ref: torch.Tensor, out: torch.Tensor, std) -> torch.Tensor:
    return (ref - out).abs() * torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("image_size", [32, (32, 24)])
def test_open_clip_transform_matches_pil(resize_mode, image_size):
    transform = image_transform(image_size, is_train=False, resize_mode=resize_mode)
    spec = PreprocessSpec.from_torchvision(transform)
    for height, width in SIZES:
        images = random_images(3, height, width, seed=height)
        ref = torch.stack([transform(img) for img in to_pil(images)])
        out = preprocess_images(images, spec)
        assert out.shape == ref.shape, (height, width)
        diff = _pixel_diff(ref, out, spec.std)
        assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL, (height, width, float(diff.max()))


def test_open_clip_model_preprocess_cfg_matches_its_transform():
    from reward_fixtures import open_clip_parts

    model, _, transform = open_clip_parts()
    assert PreprocessSpec.from_open_clip_cfg(model.visual.preprocess_cfg) == PreprocessSpec.from_torchvision(transform)


def test_open_clip_spec_of_longest_mode_reads_pad_fill():
    transform = image_transform(32, is_train=False, resize_mode="longest", fill_color=255)
    spec = PreprocessSpec.from_torchvision(transform)
    assert spec.resize_mode == "longest" and spec.fill == 1.0
    images = random_images(2, 20, 60)
    out = preprocess_images(images, spec)
    ref = torch.stack([transform(img) for img in to_pil(images)])
    assert _pixel_diff(ref, out, spec.std).max() <= MAX_TOL


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
def test_transformers_image_processor_matches(backend):
    from transformers import CLIPImageProcessor

    if backend == "pil":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as processor_cls
    else:
        processor_cls = CLIPImageProcessor
    # odd crop offsets on purpose: transformers floors the offset where open_clip/torchvision round it
    processor = processor_cls(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 29})
    spec = PreprocessSpec.from_image_processor(processor)
    assert spec.crop_rounding == "floor"
    for height, width in SIZES:
        images = random_images(3, height, width, seed=width)
        ref = processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
        out = preprocess_images(images, spec)
        assert out.shape == ref.shape == (3, 3, 32, 29)
        diff = _pixel_diff(ref, out, spec.std)
        assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL, (height, width, float(diff.max()))


def test_preprocessing_runs_on_the_images_device_and_is_differentiable():
    spec = PreprocessSpec((32, 32), "shortest", (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = random_images(2, 48, 40).requires_grad_(True)
    out = preprocess_images(images, spec)
    assert out.device == images.device and out.shape == (2, 3, 32, 32)
    out.sum().backward()
    assert images.grad.abs().sum() > 0


def test_unsupported_transform_step_is_a_clear_error():
    from torchvision import transforms as T

    with pytest.raises(ValueError, match="pass a PreprocessSpec instead"):
        PreprocessSpec.from_torchvision(T.Compose([T.Resize(32), T.RandomHorizontalFlip(), T.Normalize([0.5] * 3, [0.5] * 3)]))
