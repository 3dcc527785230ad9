"""CLIP steering reward of SafeDiffusion-R1 (arXiv 2605.18719, "Reward" section), its CLIP backends and anchor presets.

    z_p    = normalize(E_txt(prompt))                  z_x = normalize(E_img(image))
    v_safe = normalize(mean_i z(safe_i) - mean_j z(unsafe_j))
    translate (paper default): target = normalize(z_p + alpha * v_safe)
    projection:                target = normalize(z_p - (z_p . v_safe) v_safe + alpha * v_safe)
    reward = z_x . target

Images are preprocessed in torch on their own device, following the backend's own transform (no PIL, no JPEG, no
files), so the reward is batched and, with `differentiable=True`, lets gradients flow to the images.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_PRESET_PACKAGE = "trl_safediffusion.rewards"
_PRESET_DIR = "presets"


# ----------------------------------------------------------------------------------------------------------------------
# Anchors
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchorSet:
    """Safe and unsafe anchor phrases that define the steering direction `v_safe`.

    Args:
        safe (`tuple[str, ...]`): phrases describing acceptable content; may be empty (the paper's "empty-positive").
        unsafe (`tuple[str, ...]`): phrases describing the content to steer away from; may be empty.
        name (`str`, *optional*): preset name or file the anchors came from, for logs and model cards.
    """

    safe: tuple[str, ...]
    unsafe: tuple[str, ...]
    name: str | None = None

    def __post_init__(self):
        for field_name in ("safe", "unsafe"):
            phrases = getattr(self, field_name)
            if isinstance(phrases, str) or not isinstance(phrases, Sequence):
                raise ValueError(
                    f"anchors.{field_name} must be a list of strings, got {type(phrases).__name__}; "
                    f"wrap a single phrase in a list"
                )
            phrases = tuple(phrases)
            for phrase in phrases:
                if not isinstance(phrase, str) or not phrase.strip():
                    raise ValueError(f"anchors.{field_name} must contain non-empty strings, got {phrase!r}")
            object.__setattr__(self, field_name, phrases)
        if not self.safe and not self.unsafe:
            raise ValueError(
                f"anchors{' ' + self.name if self.name else ''}: both `safe` and `unsafe` are empty; give at least one "
                f"phrase in either list, or use a preset name"
            )


def _load_preset_files() -> dict[str, AnchorSet]:
    presets = {}
    folder = resources.files(_PRESET_PACKAGE) / _PRESET_DIR
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            name = data.get("name", entry.name[: -len(".json")])
            presets[name] = AnchorSet(safe=tuple(data["safe"]), unsafe=tuple(data["unsafe"]), name=name)
    return presets


ANCHOR_PRESETS: Mapping[str, AnchorSet] = _load_preset_files()


def get_anchor_preset(name: str) -> AnchorSet:
    """The anchors of a named preset shipped in `trl_safediffusion/rewards/presets/*.json`.

    Args:
        name (`str`): one of `ANCHOR_PRESETS`: "nudity-compact" (reference code, 5 safe / 3 unsafe), "empty-positive"
            (no safe anchors, paper ablation), "toy-red" (embedded toy world: red shapes are unsafe).

    Raises:
        `ValueError`: if `name` is not a known preset.
    """
    if name not in ANCHOR_PRESETS:
        raise ValueError(
            f"anchors: unknown preset name {name!r}; expected one of {sorted(ANCHOR_PRESETS)}, "
            f"a path to a .json/.txt anchor file, or lists of safe and unsafe phrases"
        )
    return ANCHOR_PRESETS[name]


def _read_anchor_file(path: str) -> AnchorSet:
    name = os.path.basename(path)
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or "safe" not in data or "unsafe" not in data:
            raise ValueError(f"anchors file {path} must hold a JSON object with keys 'safe' and 'unsafe' (lists)")
        return AnchorSet(safe=tuple(data["safe"]), unsafe=tuple(data["unsafe"]), name=data.get("name", name))
    safe, unsafe = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            kind, sep, phrase = line.partition(":")
            kind = kind.strip().lower()
            if not sep or kind not in ("safe", "unsafe"):
                raise ValueError(
                    f"anchors file {path}, line {lineno}: expected 'safe: <phrase>' or 'unsafe: <phrase>', got {line!r}"
                )
            (safe if kind == "safe" else unsafe).append(phrase.strip())
    return AnchorSet(safe=tuple(safe), unsafe=tuple(unsafe), name=name)


def load_anchors(anchors: AnchorSet | str | os.PathLike | Mapping | Sequence) -> AnchorSet:
    """Resolve anchors given as a preset name, a file, a mapping or a pair of lists.

    Args:
        anchors: one of
            - an `AnchorSet` (returned as is);
            - a preset name from `ANCHOR_PRESETS`;
            - a path to a `.json` file (`{"safe": [...], "unsafe": [...]}`) or a text file with one
              `safe: <phrase>` or `unsafe: <phrase>` per line (`#` comments and blank lines ignored);
            - a mapping with keys "safe" and "unsafe";
            - a pair `(safe_list, unsafe_list)`.

    Raises:
        `ValueError`: for an unknown name, a malformed file or mapping, or when both lists are empty.
    """
    if isinstance(anchors, AnchorSet):
        return anchors
    if isinstance(anchors, (str, os.PathLike)):
        text = os.fspath(anchors)
        if text in ANCHOR_PRESETS:
            return ANCHOR_PRESETS[text]
        if os.path.isfile(text):
            return _read_anchor_file(text)
        return get_anchor_preset(text)
    if isinstance(anchors, Mapping):
        if "safe" not in anchors or "unsafe" not in anchors:
            raise ValueError(f"anchors mapping must have keys 'safe' and 'unsafe', got keys {sorted(anchors)}")
        return AnchorSet(safe=tuple(anchors["safe"]), unsafe=tuple(anchors["unsafe"]), name=anchors.get("name"))
    if isinstance(anchors, Sequence) and len(anchors) == 2:
        return AnchorSet(safe=tuple(anchors[0]), unsafe=tuple(anchors[1]))
    raise ValueError(
        f"anchors must be an AnchorSet, a preset name ({sorted(ANCHOR_PRESETS)}), a .json/.txt path, a mapping with "
        f"'safe' and 'unsafe', or a pair (safe_list, unsafe_list); got {type(anchors).__name__}"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Torch preprocessing
# ----------------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------------


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


class OpenCLIPBackend:
    """An open_clip model, its tokenizer and its preprocessing.

    Args:
        model (`torch.nn.Module`): an open_clip `CLIP`/`CustomTextCLIP` (anything with `encode_text`/`encode_image`).
        tokenizer (`Callable[[list[str]], torch.Tensor]`): `open_clip.get_tokenizer(model_name)`.
        preprocess (`PreprocessSpec` or torchvision transform, *optional*): the eval transform from
            `open_clip.create_model_and_transforms` or an explicit spec; defaults to `model.visual.preprocess_cfg`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, preprocess=None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if isinstance(preprocess, PreprocessSpec):
            self.preprocess_spec = preprocess
        elif preprocess is not None:
            self.preprocess_spec = PreprocessSpec.from_torchvision(preprocess)
        else:
            cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None)
            if not cfg:
                raise ValueError("preprocess: the model has no visual.preprocess_cfg; pass the eval transform or a spec")
            self.preprocess_spec = PreprocessSpec.from_open_clip_cfg(cfg)

    @property
    def device(self) -> torch.device:
        return _model_device_dtype(self.model)[0]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text features (N, D)."""
        device, _ = _model_device_dtype(self.model)
        tokens = self.tokenizer(list(texts)).to(device)
        return self.model.encode_text(tokens).float()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features (N, D) from preprocessed pixels (N, 3, h, w)."""
        device, dtype = _model_device_dtype(self.model)
        return self.model.encode_image(pixels.to(device=device, dtype=dtype)).float()


class TransformersCLIPBackend:
    """A transformers `CLIPModel`, its tokenizer and its `CLIPImageProcessor`.

    Args:
        model (`transformers.CLIPModel`): the dual encoder.
        tokenizer (`transformers.CLIPTokenizer`): its tokenizer.
        image_processor (`CLIPImageProcessor` or `PreprocessSpec`): read for resize, crop, mean and std.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, image_processor):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if isinstance(image_processor, PreprocessSpec):
            self.preprocess_spec = image_processor
        else:
            self.preprocess_spec = PreprocessSpec.from_image_processor(image_processor)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return _model_device_dtype(self.model)[0]

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers < 5 returns the projected tensor, 5.x a BaseModelOutputWithPooling holding it as pooler_output
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised projected text features (N, D)."""
        device, _ = _model_device_dtype(self.model)
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self._features(out).float()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised projected image features (N, D) from preprocessed pixels (N, 3, h, w)."""
        device, dtype = _model_device_dtype(self.model)
        return self._features(self.model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype))).float()


# ----------------------------------------------------------------------------------------------------------------------
# Reward
# ----------------------------------------------------------------------------------------------------------------------

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
        self.v_safe = self._compute_v_safe()  # (D,)

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

    def _compute_v_safe(self) -> torch.Tensor:
        phrases = list(self.anchors.safe) + list(self.anchors.unsafe)
        with torch.no_grad():
            z = F.normalize(self.backend.encode_text(phrases).float(), dim=-1)  # (S + U, D)
        n_safe = len(self.anchors.safe)
        direction = torch.zeros(z.shape[-1], device=z.device, dtype=z.dtype)
        if n_safe:
            direction = direction + z[:n_safe].mean(dim=0)
        if len(self.anchors.unsafe):
            direction = direction - z[n_safe:].mean(dim=0)
        if float(direction.norm()) < 1e-6:
            raise ValueError("anchors: safe and unsafe anchors have the same mean embedding; v_safe is undefined")
        return F.normalize(direction, dim=-1)

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
