"""CLIP backends of the steering reward: an open_clip or a transformers dual encoder, its tokenizer and its
preprocessing as a `PreprocessSpec`.

A backend is any object with `encode_text(list[str]) -> (N, D)`, `encode_image(pixels) -> (N, D)` and a
`preprocess_spec`; the two here wrap models already loaded, or load them with `from_pretrained`.
"""

from __future__ import annotations

import logging
import os

import torch

from .preprocess import PreprocessSpec

logger = logging.getLogger(__name__)


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

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: str | None = None,
        model_config: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
    ) -> OpenCLIPBackend:
        """Load an open_clip model: an architecture name plus a pretrained tag or a local checkpoint, an `hf-hub:` id,
        or a local directory holding `open_clip_config.json` and weights (open_clip's Hub layout).

        Args:
            model_name (`str`): e.g. "ViT-H-14", "hf-hub:org/repo", a directory, or a name registered by `model_config`.
            pretrained (`str`, *optional*): a tag (e.g. "laion2b_s32b_b79k"), a checkpoint file (.pt/.bin/.safetensors)
                or a directory with `open_clip_config.json` + weights.
            model_config (`str` or path, *optional*): a JSON model config to register with `open_clip.add_model_config`
                first (its file stem becomes the architecture name).
            device, precision, cache_dir: passed to `open_clip.create_model_and_transforms`.

        Returns:
            `OpenCLIPBackend`: with `source` set to what a model card needs (backend, model, checkpoint file name).
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
        backend = cls(model, tokenizer, preprocess)
        backend.source = {"backend": "open_clip", "model": model_name,
                          "pretrained": os.path.basename(pretrained) if pretrained else None}
        return backend

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

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32
    ) -> TransformersCLIPBackend:
        """Load a transformers `CLIPModel` Hub id or local folder (e.g. "openai/clip-vit-large-patch14").

        Args:
            name_or_path (`str`): Hub id or folder holding the model, tokenizer and image processor.
            device (`str` or `torch.device`, *optional*, defaults to `"cpu"`), torch_dtype (`torch.dtype`, *optional*).

        Returns:
            `TransformersCLIPBackend`: with `source` set to what a model card needs (backend, model).
        """
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(name_or_path, dtype=torch_dtype).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        processor = CLIPImageProcessor.from_pretrained(name_or_path)
        logger.info("Loaded transformers CLIPModel %s for the steering reward", name_or_path)
        backend = cls(model, tokenizer, processor)
        backend.source = {"backend": "transformers", "model": name_or_path}
        return backend

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
