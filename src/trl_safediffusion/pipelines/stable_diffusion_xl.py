"""The Stable Diffusion XL adapter of the model interface (`DefaultDDPOStableDiffusionXLPipeline`).

SDXL is Stable Diffusion with two text encoders and a UNet that also reads a pooled text embedding and six "time ids"
(original size, crop corner, target size). Everything else (the DDIM policy with its log-probability, LoRA or full
fine-tuning, the mixed-precision placement, the checkpoints) is the Stable Diffusion adapter's, which this one
subclasses.
"""

from __future__ import annotations

import torch

from .conditioning import Conditioning
from .stable_diffusion import DefaultDDPOStableDiffusionPipeline


class DefaultDDPOStableDiffusionXLPipeline(DefaultDDPOStableDiffusionPipeline):
    r"""
    Wraps a diffusers `StableDiffusionXLPipeline` for DDPO/GRPO training.

    The conditioning of a prompt is `{"prompt_embeds": (N, L, D1 + D2), "pooled_prompt_embeds": (N, P),
    "add_time_ids": (N, 6)}`: the stock pipeline's `encode_prompt` (both text encoders' penultimate hidden states
    side by side, the second encoder's pooled projection), cached per prompt, and its `_get_add_time_ids` with
    original size = target size = `(sample_height, sample_width)` and crop `(0, 0)`. The empty prompt (the
    unconditional branch when no negative prompt is set) is all zeros when the pipeline's config has
    `force_zeros_for_empty_prompt` (SDXL base has), as the stock pipeline samples without a negative prompt; its time
    ids are the same. The policy is a DDIM sampler built from the checkpoint's scheduler config, as for Stable
    Diffusion; the VAE decodes in float32 when it is in float16 and its config has `force_upcast`.

    Args: those of [`DefaultDDPOStableDiffusionPipeline`] (a Hub id, local folder or built
    `StableDiffusionXLPipeline` first). `sample_height` / `sample_width` default to the UNet's native size (1024 for
    SDXL base) and are also the size in the time ids.
    """

    diffusers_pipeline_class_name = "StableDiffusionXLPipeline"
    family_tags = ("stable-diffusion-xl",)
    default_guidance_scale = 5.0
    accepts_prompt_embeds = False  # the conditioning also holds pooled embeddings and time ids

    def _check_pipeline(self):
        """The sample size (as for Stable Diffusion: a multiple of the VAE factor; the UNet pads odd latent sizes
        itself) and the UNet's added embedding (it must read the pooled projection and six time ids), before the
        pipeline is changed."""
        super()._check_pipeline()
        self.add_time_ids(self.sample_height, self.sample_width)  # diffusers' ValueError when they do not fit

    # ------------------------------------------------------------------ components
    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.sd_pipeline.text_encoder_2) if m is not None]

    def _components(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        named = (("vae", self.vae), ("text_encoder", self.text_encoder), ("text_encoder_2", self.sd_pipeline.text_encoder_2),
                 ("unet", self.unet))
        return tuple((name, module) for name, module in named if module is not None)

    # ------------------------------------------------------------------ conditioning
    def _text_device(self) -> torch.device:
        return next(m for m in (self.sd_pipeline.text_encoder_2, self.text_encoder) if m is not None).device

    def _encode_text(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`(prompt_embeds (L, D1 + D2), pooled_prompt_embeds (P,))` per prompt from the stock `encode_prompt`,
        uncached; zeros for the empty prompt under `force_zeros_for_empty_prompt`."""
        embeds, _, pooled, _ = self.sd_pipeline.encode_prompt(
            prompts, device=self._text_device(), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        zero_empty = bool(self.sd_pipeline.config.get("force_zeros_for_empty_prompt", False))
        return [
            (torch.zeros_like(e), torch.zeros_like(q)) if zero_empty and p == "" else (e, q)
            for p, e, q in zip(prompts, embeds, pooled)
        ]

    @torch.no_grad()
    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds (B, L, D1 + D2), pooled_prompt_embeds (B, P))` of `prompts`, cached per prompt."""
        rows = self._cached_rows(prompts, self._encode_text)
        return torch.stack([e for e, _ in rows]), torch.stack([q for _, q in rows])

    def add_time_ids(self, height: int | None = None, width: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """(1, 6) time ids of the stock pipeline for images of `height` x `width` (default: the sample size):
        original size = target size = `(height, width)`, crop `(0, 0)`."""
        size = (height or self.sample_height, width or self.sample_width)
        te2 = self.sd_pipeline.text_encoder_2
        projection_dim = te2.config.projection_dim if te2 is not None else None
        if projection_dim is None:
            projection_dim = self.unet.add_embedding.linear_1.in_features - 6 * self.unet.config.addition_time_embed_dim
        return self.sd_pipeline._get_add_time_ids(size, (0, 0), size, dtype=dtype,
                                                  text_encoder_projection_dim=projection_dim)

    def encode_conditioning(self, prompts, height: int | None = None, width: int | None = None) -> Conditioning:
        """`{"prompt_embeds": (B, L, D1 + D2), "pooled_prompt_embeds": (B, P), "add_time_ids": (B, 6)}` for
        `prompts`, the time ids for `height` x `width` (default: the sample size)."""
        embeds, pooled = self.encode_prompts(prompts)
        time_ids = self.add_time_ids(height, width, dtype=embeds.dtype).to(embeds.device)
        return {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "add_time_ids": time_ids.expand(embeds.shape[0], -1),
        }

    # ------------------------------------------------------------------ sampling
    def unet_output(self, unet, latents, timesteps, conditioning: Conditioning) -> torch.Tensor:
        """SDXL's UNet call: the text states as encoder hidden states, the pooled embedding and the time ids as its
        added conditioning."""
        added = {"text_embeds": conditioning["pooled_prompt_embeds"], "time_ids": conditioning["add_time_ids"]}
        return unet(latents, timesteps, encoder_hidden_states=conditioning["prompt_embeds"],
                    added_cond_kwargs=added).sample

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return super().latent_shape(height or self.sample_height, width or self.sample_width)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode to float32 images (B, 3, H, W) in [0, 1]; a float16 VAE whose config has `force_upcast` (SDXL's
        overflows in float16) decodes in float32 and is put back in float16 afterwards (an exact round trip)."""
        vae = self.vae
        if not (vae.dtype == torch.float16 and vae.config.get("force_upcast", False)):
            return super().decode_latents(latents)
        vae.to(dtype=torch.float32)
        try:
            return super().decode_latents(latents)
        finally:
            vae.to(dtype=torch.float16)

    def _call_conditioning(self, prompts: list[str], height: int | None, width: int | None) -> Conditioning:
        """What `__call__` encodes `prompts` to: `encode_conditioning`, the time ids for `height` x `width`."""
        return self.encode_conditioning(prompts, height, width)

    # ------------------------------------------------------------------ saving
    def _pipeline_with_unet(self, unet):
        """A `StableDiffusionXLPipeline` with the frozen components and `unet` (what a fused save writes)."""
        from diffusers import StableDiffusionXLPipeline

        pipe = self.sd_pipeline
        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.sd_pipeline.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.sd_pipeline.tokenizer_2,
            unet=unet,
            scheduler=self.scheduler,
            image_encoder=getattr(pipe, "image_encoder", None),
            feature_extractor=getattr(pipe, "feature_extractor", None),
            force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", True)),
            add_watermarker=False,
        )


__all__ = ["DefaultDDPOStableDiffusionXLPipeline"]
