"""CLIP image preprocessing replayed in torch: a backend's resize, centre crop and normalisation as a `PreprocessSpec`.

Images are preprocessed on their own device (no PIL, no JPEG, no files), so the steering reward is batched and,
when asked, differentiable with respect to the images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

_RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a CLIP backend turns an image into model input, replayed in torch on the images' device.

    Args:
        resize_size (`tuple[int, int]`): target (height, width) of the resize.
        resize_mode (`str`): "shortest" scales the short edge to fit `resize_size` (for a square target the long edge
            is floored, as torchvision's `Resize(int)` and transformers' `shortest_edge` do; otherwise both edges are
            rounded, as open_clip's `ResizeKeepRatio`), "longest" scales the long edge to fit (rounded), "squash"
            resizes to exactly `resize_size`.
        crop_size (`tuple[int, int]`, *optional*): centre crop (height, width), padded with `fill` when larger than the
            image; `None` for no crop.
        mean (`tuple[float, float, float]`), std (`tuple[float, float, float]`): per-channel normalisation.
        interpolation (`str`, *optional*, defaults to `"bicubic"`): "bicubic" or "bilinear" (always antialiased, as PIL).
        crop_rounding (`str`, *optional*, defaults to `"round"`): "round" (torchvision `CenterCrop`) or "floor"
            (transformers' numpy `center_crop`) for the crop offset.
        fill (`float`, *optional*, defaults to `0.0`): pad value in [0, 1] for crops larger than the image.
    """

    resize_size: tuple[int, int]
    resize_mode: str
    crop_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_rounding: str = "round"
    fill: float = 0.0

    def __post_init__(self):
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {_RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.crop_rounding not in ("round", "floor"):
            raise ValueError(f"crop_rounding must be 'round' or 'floor', got {self.crop_rounding!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std must have 3 values (RGB), got mean={self.mean} std={self.std}")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.crop_size if self.crop_size is not None else self.resize_size

    @classmethod
    def from_open_clip_cfg(cls, cfg: Mapping[str, Any]) -> PreprocessSpec:
        """Spec from an open_clip `preprocess_cfg` dict (`model.visual.preprocess_cfg`), as `image_transform` reads it."""
        size = cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        mode = cfg.get("resize_mode", "shortest")
        interpolation = "bilinear" if cfg.get("interpolation", "bicubic") == "bilinear" else "bicubic"
        mean, std = _three(cfg["mean"]), _three(cfg["std"])
        crop = None if mode == "squash" else size
        return cls(size, mode, crop, mean, std, interpolation, "round", float(cfg.get("fill_color", 0)) / 255.0)

    @classmethod
    def from_torchvision(cls, transform) -> PreprocessSpec:
        """Spec read from an eval transform (a torchvision `Compose` as open_clip's `create_model_and_transforms`
        returns), understanding `Resize`, open_clip's `ResizeKeepRatio`, `CenterCrop`, `CenterCropOrPad`, `Normalize`."""
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
        from torchvision import transforms as T

        steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
        resize_size = resize_mode = crop = mean = std = None
        interpolation, fill = "bicubic", 0.0
        for step in steps:
            if isinstance(step, T.Resize):
                size = step.size
                if isinstance(size, int) or len(size) == 1:
                    edge = size if isinstance(size, int) else size[0]
                    resize_size, resize_mode = (edge, edge), "shortest"
                else:
                    resize_size, resize_mode = tuple(size), "squash"
                interpolation = _interp_name(step.interpolation)
            elif isinstance(step, ResizeKeepRatio):
                resize_size = tuple(step.size)
                resize_mode = "longest" if step.longest > 0.5 else "shortest"
                interpolation = _interp_name(step.interpolation)
            elif isinstance(step, CenterCropOrPad):
                crop, fill = tuple(step.size), float(step.fill) / 255.0
            elif isinstance(step, T.CenterCrop):
                crop = tuple(step.size)
            elif isinstance(step, T.Normalize):
                mean, std = _three(step.mean), _three(step.std)
            elif type(step).__name__ in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "function"):
                continue
            elif callable(step) and getattr(step, "__name__", "") == "_convert_to_rgb":
                continue
            else:
                raise ValueError(
                    f"preprocess: cannot replay transform step {step!r} in torch; pass a PreprocessSpec instead"
                )
        if resize_size is None or mean is None:
            raise ValueError(
                f"preprocess: transform {transform!r} has no Resize or no Normalize step; pass a PreprocessSpec instead"
            )
        return cls(resize_size, resize_mode, crop, mean, std, interpolation, "round", fill)

    @classmethod
    def from_image_processor(cls, processor) -> PreprocessSpec:
        """Spec from a transformers `CLIPImageProcessor` (torchvision backend) or `CLIPImageProcessorPil`/slow one."""
        if not getattr(processor, "do_rescale", True) or not math.isclose(
            getattr(processor, "rescale_factor", 1 / 255), 1 / 255
        ):
            raise ValueError("image_processor must rescale uint8 pixels by 1/255 (do_rescale=True, rescale_factor=1/255)")
        size = _size_dict(processor.size)
        if not getattr(processor, "do_resize", True):
            raise ValueError("image_processor.do_resize=False is not supported: CLIP needs a fixed input size")
        if "shortest_edge" in size and size["shortest_edge"]:
            edge = int(size["shortest_edge"])
            resize_size, mode = (edge, edge), "shortest"
        elif size.get("height") and size.get("width"):
            resize_size, mode = (int(size["height"]), int(size["width"])), "squash"
        else:
            raise ValueError(f"image_processor.size must have 'shortest_edge' or 'height'/'width', got {size}")
        crop = None
        if getattr(processor, "do_center_crop", False):
            crop_dict = _size_dict(processor.crop_size)
            crop = (int(crop_dict["height"]), int(crop_dict["width"]))
        resample = getattr(processor, "resample", 3)
        interpolation = "bilinear" if int(getattr(resample, "value", resample)) == 2 else "bicubic"
        # transformers 5 floors the crop offset in both its PIL/numpy and torchvision backends; the 4.x "*Fast"
        # processors called torchvision's center_crop, which rounds.
        rounds = type(processor).__name__.endswith("Fast")
        if getattr(processor, "do_normalize", True):
            mean, std = _three(processor.image_mean), _three(processor.image_std)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(resize_size, mode, crop, mean, std, interpolation, "round" if rounds else "floor", 0.0)


def _three(values) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values


def _interp_name(mode) -> str:
    return "bilinear" if "bilinear" in str(mode).lower() else "bicubic"


def _size_dict(size) -> dict:
    if isinstance(size, int):
        return {"shortest_edge": size}
    return {k: getattr(size, k, None) for k in ("shortest_edge", "height", "width")} if not isinstance(
        size, Mapping
    ) else dict(size)


def _resized_hw(spec: PreprocessSpec, height: int, width: int) -> tuple[int, int]:
    target_h, target_w = spec.resize_size
    if spec.resize_mode == "squash":
        return target_h, target_w
    if spec.resize_mode == "shortest" and target_h == target_w:
        # torchvision Resize(int) / transformers shortest_edge: short edge -> size, long edge floored
        short, long = min(height, width), max(height, width)
        new_long = int(target_h * long / short)
        return (target_h, new_long) if height <= width else (new_long, target_h)
    ratio_h, ratio_w = height / target_h, width / target_w
    ratio = max(ratio_h, ratio_w) if spec.resize_mode == "longest" else min(ratio_h, ratio_w)
    return round(height / ratio), round(width / ratio)


def preprocess_images(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Resize, centre-crop and normalise `images` (B, 3, H, W) in [0, 1] as `spec` says, in torch on their device.

    Resizing is antialiased (as PIL) and clamped to [0, 1] (as PIL's uint8 output), so the result matches the backend's
    PIL transform up to interpolation rounding. Differentiable.
    """
    height, width = images.shape[-2:]
    new_h, new_w = _resized_hw(spec, height, width)
    x = images
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    if spec.crop_size is not None:
        crop_h, crop_w = spec.crop_size
        if crop_h > new_h or crop_w > new_w:
            pad_h, pad_w = max(crop_h - new_h, 0), max(crop_w - new_w, 0)
            # (left, right, top, bottom), the same split as torchvision's center crop padding
            x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=spec.fill)
            new_h, new_w = x.shape[-2:]
        if spec.crop_rounding == "round":
            top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        else:
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        x = x[..., top : top + crop_h, left : left + crop_w]
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
