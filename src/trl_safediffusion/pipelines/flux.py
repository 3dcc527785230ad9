"""The FLUX.1 adapter of the model interface (`DefaultDDPOFluxPipeline`).

The policy is Flow-GRPO's SDE step of the flow-matching scheduler ([`~trl_safediffusion.schedulers.flow_sde`]); the
trainers' `sample_eta` is its noise level a. FLUX.1-dev is guidance-distilled: its transformer takes the guidance as an
input (the adapter's `guidance=`) and there is no classifier-free guidance, so `sample_guidance_scale` must be 1.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..schedulers.flow_sde import FLOW_GRPO_NOISE_LEVEL
from .base import DDPOPipelineOutput
from .flow_matching import DEFAULT_FLOW_LORA_TARGET_MODULES, FlowMatchingAdapter
from .precision import _module_dtype
from .stable_diffusion import vae_decode

# the attention projections (the double blocks' image stream and the single blocks' to_q / to_k / to_v)
DEFAULT_FLUX_LORA_TARGET_MODULES = DEFAULT_FLOW_LORA_TARGET_MODULES


class DefaultDDPOFluxPipeline(FlowMatchingAdapter):
    r"""
    Wraps a diffusers `FluxPipeline` (FLUX.1-dev, FLUX.1-schnell) for DDPO / GRPO training of its
    `FluxTransformer2DModel` with Flow-GRPO's SDE policy.

    - The trainers' `eta` (`config.sample_eta`) is the SDE noise level a of
      [`~trl_safediffusion.schedulers.flow_sde_step_with_logprob`] (Flow-GRPO trains with 0.7).
    - There is no classifier-free guidance: `config.sample_guidance_scale` must be 1 (`step_distribution` raises
      otherwise). A transformer with `guidance_embeds` (FLUX.1-dev) gets the distilled guidance `guidance` at every
      step; schnell has none.
    - Latents are packed as the stock pipeline packs them: one sample is `(seq_len, 4 * latent_channels)`, 2 x 2
      latent patches as tokens. The text and image position ids are computed from the resolution, not stored.
    - The timesteps are the stock pipeline's: sigmas `linspace(1, 1 / T, T)`, shifted by the resolution-dependent
      `mu` of the scheduler config (`use_dynamic_shifting`).

    Args:
        guidance (`float`, *optional*, defaults to `3.5`): the distilled guidance given to a transformer with
            `guidance_embeds` (the stock pipeline's `guidance_scale`); unused without.
        max_sequence_length (`int`, *optional*, defaults to `512`): T5 tokens of the prompt embeddings, as the stock
            pipeline's argument (at most 512).
        sample_height (`int`, *optional*): image height of the rollouts; defaults to the stock pipeline's
            `default_sample_size * vae_scale_factor` (1024 for FLUX.1). Must be a multiple of `vae_scale_factor * 2`.
        others: as [`FlowMatchingAdapter`] (the source is a `FluxPipeline`, or a Hub id / folder of one).
    """

    diffusers_pipeline_class_name = "FluxPipeline"
    transformer_class_name = "FluxTransformer2DModel"
    family_tags = ("flux",)
    eval_frozen_modules = True  # no dropout in the frozen encoders either (a T5 built from a config has 0.1)

    def __init__(self, pretrained_model_name_or_pipeline, *, guidance: float = 3.5, max_sequence_length: int = 512,
                 use_lora: bool = True, lora_rank: int = 4, lora_alpha: float = 4, lora_target_modules=None,
                 trainable_modules=None, noise_level: float = FLOW_GRPO_NOISE_LEVEL, sample_height: int | None = None,
                 sample_width: int | None = None, torch_dtype: torch.dtype | None = None,
                 pretrained_model_revision: str = "main", prompt_cache_size: int = 4096):
        if not guidance >= 0:
            raise ValueError(f"guidance must be >= 0 (FLUX.1-dev's distilled guidance, e.g. 3.5), got {guidance}")
        if not isinstance(max_sequence_length, int) or not 0 < max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be an integer in [1, 512] (T5 tokens), got "
                             f"{max_sequence_length!r}")
        self.guidance = float(guidance)
        super().__init__(
            pretrained_model_name_or_pipeline, pretrained_model_revision=pretrained_model_revision, use_lora=use_lora,
            lora_rank=lora_rank, lora_alpha=lora_alpha, lora_target_modules=lora_target_modules,
            trainable_modules=trainable_modules, torch_dtype=torch_dtype, sample_height=sample_height,
            sample_width=sample_width, noise_level=noise_level, max_sequence_length=max_sequence_length,
            prompt_cache_size=prompt_cache_size,
        )
        self._resolution = (self.sample_height, self.sample_width)

    # ------------------------------------------------------------------ resolution and packing
    def _check_size(self, name: str, value: int | None) -> int:
        multiple = self.vae_scale_factor * 2
        if value is None:
            return self.sd_pipeline.default_sample_size * self.vae_scale_factor
        if not isinstance(value, int) or value < multiple or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of vae_scale_factor * 2 = {multiple} (FLUX packs 2 x 2 "
                             f"latent patches), got {value!r}")
        return value

    @contextlib.contextmanager
    def at_resolution(self, height: int | None = None, width: int | None = None):
        """Within the block, rollouts, timesteps (the shift `mu`), position ids and decoding are at `height` x `width`
        (either left as it is when None: outside any block `sample_height` x `sample_width`)."""
        previous = self._resolution
        self._resolution = (
            self._check_size("height", height) if height is not None else previous[0],
            self._check_size("width", width) if width is not None else previous[1],
        )
        try:
            yield
        finally:
            self._resolution = previous

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The packed latent of one sample, `((h / 2) * (w / 2), 4 * latent_channels)` for `h` x `w` latents."""
        height = self._check_size("height", height) if height is not None else self._resolution[0]
        width = self._check_size("width", width) if width is not None else self._resolution[1]
        factor = self.vae_scale_factor * 2
        return ((height // factor) * (width // factor), (self.transformer.config.in_channels // 4) * 4)

    def _position_ids(self, latents: torch.Tensor, text_tokens: int, dtype: torch.dtype):
        """`(txt_ids (L, 3), img_ids (seq_len, 3))` of the current resolution, as the stock pipeline builds them."""
        from diffusers import FluxPipeline

        height, width = self._resolution
        if latents.shape[1:] != self.latent_shape():
            raise ValueError(f"latents of shape {tuple(latents.shape[1:])} are not the packed latents of the "
                             f"{height} x {width} resolution {self.latent_shape()}; set sample_height / sample_width, "
                             "or wrap the call in at_resolution(height, width)")
        factor = self.vae_scale_factor * 2
        img_ids = FluxPipeline._prepare_latent_image_ids(1, height // factor, width // factor, latents.device, dtype)
        return torch.zeros(text_tokens, 3, device=latents.device, dtype=dtype), img_ids


    # ------------------------------------------------------------------ text
    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds (B, L, D) T5 states, pooled_prompt_embeds (B, P) CLIP pooled)` of `prompts`."""
        embeds, pooled, _ = self.sd_pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.text_encoder.device,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds, pooled

    # ------------------------------------------------------------------ sampling
    def _set_timesteps_kwargs(self, num_inference_steps: int) -> dict:
        """The stock pipeline's `sigmas` and resolution-dependent `mu` (used by a scheduler with
        `use_dynamic_shifting`) for the current resolution."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler.config
        mu = calculate_shift(self.latent_shape()[0], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def predict(self, transformer, latents, timesteps, conditioning):
        """The transformer's velocity at the packed `latents` (B, seq_len, C) and scheduler `timesteps` (sigma * 1000,
        a scalar or (B,)), called as the stock pipeline calls it (`timestep / 1000`, the distilled `guidance` when the
        transformer has `guidance_embeds`); inputs are cast to the model's dtype."""
        dtype = _module_dtype(transformer)
        batch, device = latents.shape[0], latents.device
        t = torch.as_tensor(timesteps, device=device).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=device, dtype=torch.float32)
        embeds = conditioning["prompt_embeds"]
        txt_ids, img_ids = self._position_ids(latents, embeds.shape[1], dtype)
        return transformer(
            hidden_states=latents.to(dtype),
            timestep=t.to(dtype) / 1000,
            guidance=guidance,
            pooled_projections=conditioning["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]

    def _check_guidance_scale(self, guidance_scale: float):
        """FLUX has no classifier-free guidance: `step_distribution` with `guidance_scale > 1` is an error (its
        `negative_conditioning` is ignored and there are no `branches`)."""
        if guidance_scale > 1.0:
            raise ValueError(
                f"sample_guidance_scale must be 1 for FLUX (no classifier-free guidance), got {guidance_scale}; the "
                f"distilled guidance of FLUX.1-dev is DefaultDDPOFluxPipeline(guidance=...) (now {self.guidance})"
            )

    def rollout(self, conditioning, *args, height: int | None = None, width: int | None = None, **kwargs):
        """The interface's [`~DDPOStableDiffusionPipeline.rollout`] at `height` x `width` (the timesteps' shift, the
        position ids and the decoding follow the resolution); `guidance_scale` defaults to 1 (no CFG)."""
        if len(args) < 3:  # (negative_conditioning, num_inference_steps, guidance_scale, ...)
            kwargs.setdefault("guidance_scale", 1.0)
        with self.at_resolution(height, width):
            return super().rollout(conditioning, *args, height=height, width=width, **kwargs)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unpack (the stock pipeline's `_unpack_latents`, at the current resolution) and VAE decode (undoing
        `scaling_factor` and `shift_factor`) to float32 images (B, 3, H, W) in [0, 1]."""
        from diffusers import FluxPipeline

        height, width = self._resolution
        if latents.shape[1:] != self.latent_shape():
            raise ValueError(f"latents of shape {tuple(latents.shape[1:])} are not the packed latents of the "
                             f"{height} x {width} resolution {self.latent_shape()}; decode within "
                             "at_resolution(height, width)")
        spatial = FluxPipeline._unpack_latents(latents, height, width, self.vae_scale_factor)
        return vae_decode(self.vae, spatial).clamp(0, 1)

    def __call__(self, prompt, height=None, width=None, num_inference_steps: int = 28,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1, eta: float | None = None,
                 generator=None, latents=None, output_type: str = "pil", **kwargs) -> DDPOPipelineOutput:
        """TRL-compatible sampling call: images plus the per-step (packed) latents and log-probabilities. As in the
        stock `FluxPipeline`, `guidance_scale` is the distilled guidance (default the adapter's `guidance`) and
        `latents` the packed initial noise; `eta` is the SDE noise level (default `noise_level`)."""
        prompts = self._call_prompts(prompt, num_images_per_prompt, kwargs)
        distilled = self.guidance
        if guidance_scale is not None:
            self.guidance = float(guidance_scale)
        try:
            out = self.rollout(
                self.encode_conditioning(prompts), num_inference_steps=num_inference_steps, guidance_scale=1.0,
                eta=self.noise_level if eta is None else eta, initial_latents=latents, generators=generator,
                height=height, width=width, show_progress=not self._progress_bar_config.get("disable", False),
            )
        finally:
            self.guidance = distilled
        return self._call_output(out, output_type)
