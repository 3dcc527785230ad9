"""CLIP backends of the steering reward: an open_clip or a transformers dual encoder, its tokenizer and its
preprocessing as a `PreprocessSpec`.

A backend is any object with `encode_text(list[str]) -> (N, D)`, `encode_image(pixels) -> (N, D)` and a
`preprocess_spec`; the two here wrap models already loaded (`CLIPSteeringReward.from_open_clip` and
`from_transformers` load them from checkpoints).
"""

from __future__ import annotations

import torch

from .preprocess import PreprocessSpec


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
