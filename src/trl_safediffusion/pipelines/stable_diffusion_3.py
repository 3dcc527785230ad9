"""The Stable Diffusion 3 / 3.5 adapter of the model interface (`DefaultDDPOStableDiffusion3Pipeline`).

The policy is Flow-GRPO's SDE step of the flow-matching scheduler ([`~trl_safediffusion.schedulers.flow_sde`]); the
trainers' `sample_eta` is its noise level a.
"""

from __future__ import annotations

import torch

from .base import DDPOPipelineOutput
from .flow_matching import DEFAULT_FLOW_LORA_TARGET_MODULES, FlowMatchingAdapter
from .precision import _module_dtype
from .stable_diffusion import vae_decode

# the attention projections of the image tokens (SD's defaults); Flow-GRPO's SD3 runs also adapt the context ones
DEFAULT_SD3_LORA_TARGET_MODULES = DEFAULT_FLOW_LORA_TARGET_MODULES
FLOW_GRPO_SD3_LORA_TARGET_MODULES = (
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
)


class DefaultDDPOStableDiffusion3Pipeline(FlowMatchingAdapter):
    r"""
    Wraps a diffusers `StableDiffusion3Pipeline` (SD3, SD3.5; the T5 encoder may be absent, `text_encoder_3=None`) for
    DDPO / GRPO training of its `SD3Transformer2DModel` with Flow-GRPO's SDE policy.

    For this family the trainers' `eta` (`config.sample_eta`) is the SDE noise level a of
    [`~trl_safediffusion.schedulers.flow_sde_step_with_logprob`] (Flow-GRPO trains with 0.7; `sample_eta=1.0`, the
    DDIM default, is a noisier policy). A fused `save_pretrained` keeps the frozen components as the base had them: a
    base without T5 is loaded back with `text_encoder_3=None, tokenizer_3=None`, as diffusers asks for any SD3 folder
    without T5.

    The arguments are [`FlowMatchingAdapter`]'s (the source is a `StableDiffusion3Pipeline`, or a Hub id / folder of
    one), with these defaults: `lora_target_modules` the image tokens' attention projections
    (`FLOW_GRPO_SD3_LORA_TARGET_MODULES` adds the context projections, as Flow-GRPO does); `sample_height` /
    `sample_width` the transformer's native `sample_size * vae_scale_factor`, a multiple of
    `vae_scale_factor * patch_size`; `max_sequence_length` 256 (zeros without T5).
    """

    # the stock diffusers class of this family and its Hub tags (model cards, `load_ddpo_pipeline`)
    diffusers_pipeline_class_name = "StableDiffusion3Pipeline"
    transformer_class_name = "SD3Transformer2DModel"
    family_tags = ("stable-diffusion-3",)
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    # ------------------------------------------------------------------ resolution
    def _check_size(self, name: str, value: int | None) -> int:
        config = self.transformer.config
        multiple = self.vae_scale_factor * config.patch_size
        if value is None:
            return config.sample_size * self.vae_scale_factor
        largest = (config.pos_embed_max_size or config.sample_size) * multiple
        if not isinstance(value, int) or value < multiple or value % multiple or value > largest:
            raise ValueError(f"{name} must be a multiple of vae_scale_factor * patch_size = {multiple} up to "
                             f"{largest} (the transformer's pos_embed_max_size), got {value!r}")
        return value

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        height = self._check_size("height", height) if height is not None else self.sample_height
        width = self._check_size("width", width) if width is not None else self.sample_width
        factor = self.vae_scale_factor
        return (self.transformer.config.in_channels, height // factor, width // factor)

    # ------------------------------------------------------------------ text
    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.sd_pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.text_encoder.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
        )
        return embeds, pooled

    # ------------------------------------------------------------------ sampling
    def _set_timesteps_kwargs(self, num_inference_steps: int) -> dict:
        """`mu` for a scheduler with `use_dynamic_shifting` (from the rollouts' resolution, as the stock pipeline)."""
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        _, h, w = self.latent_shape()
        patch = self.transformer.config.patch_size
        return {"mu": calculate_shift((h // patch) * (w // patch), config.get("base_image_seq_len", 256),
                                      config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                      config.get("max_shift", 1.16))}

    def predict(self, transformer, latents, timesteps, conditioning):
        """The transformer's velocity at `latents` (B, C, h, w) and scheduler `timesteps` (sigma * 1000, a scalar or
        (B,)), as the stock pipeline calls it; inputs are cast to the model's dtype (autocast then picks the compute
        dtype)."""
        dtype = _module_dtype(transformer)
        t = torch.as_tensor(timesteps, device=latents.device).reshape(-1)
        t = t.expand(latents.shape[0]) if t.numel() == 1 else t
        return transformer(
            hidden_states=latents.to(dtype),
            timestep=t,
            encoder_hidden_states=conditioning["prompt_embeds"].to(dtype),
            pooled_projections=conditioning["pooled_prompt_embeds"].to(dtype),
            return_dict=False,
        )[0]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode (undoing `scaling_factor` and `shift_factor`) to float32 images (B, 3, H, W) in [0, 1]."""
        return vae_decode(self.vae, latents).clamp(0, 1)

    def __call__(self, prompt, height=None, width=None, num_inference_steps: int = 28, guidance_scale: float = 7.0,
                 negative_prompt=None, num_images_per_prompt: int = 1, eta: float | None = None, generator=None,
                 latents=None, output_type: str = "pil", **kwargs) -> DDPOPipelineOutput:
        """TRL-compatible sampling call: images plus the per-step latents and log-probabilities (`eta` is the SDE
        noise level, default `noise_level`)."""
        prompts = self._call_prompts(prompt, num_images_per_prompt, kwargs)
        negative = None
        if guidance_scale > 1.0:
            neg = negative_prompt if negative_prompt is not None else ""
            negative = self.encode_conditioning([neg] * len(prompts) if isinstance(neg, str) else list(neg))
        out = self.rollout(
            self.encode_conditioning(prompts), negative, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, eta=self.noise_level if eta is None else eta, initial_latents=latents,
            generators=generator, height=height, width=width,
            show_progress=not self._progress_bar_config.get("disable", False),
        )
        return self._call_output(out, output_type)
