"""The Stable Diffusion 3 / 3.5 adapter of the model interface (`DefaultDDPOStableDiffusion3Pipeline`).

The policy is Flow-GRPO's SDE step of the flow-matching scheduler ([`~trl_safediffusion.schedulers.flow_sde`]); the
trainers' `sample_eta` is its noise level a.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

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


class RepeatedTokenJointAttnProcessor:
    r"""
    SD3 joint attention in which the last context token stands for `repeats` identical tokens: its attention logit is
    raised by `log(repeats)` for every query. Identical keys and values contribute `repeats * exp(q.k) v` to every
    softmax, and identical context tokens stay identical through the blocks (every other operation is per token), so
    with the last token equal to the zero T5 token that `StableDiffusion3Pipeline` appends `repeats` times without T5,
    the outputs equal the stock processor's on the full sequence, for far less compute.

    Args:
        repeats (`int`): how many identical tokens the last context token stands for.
    """

    def __init__(self, repeats: int):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.repeats = repeats

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("RepeatedTokenJointAttnProcessor needs context tokens (joint attention)")
        batch, n_image = hidden_states.shape[:2]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)  # (B, H, L, d)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        cq = heads(attn.add_q_proj(encoder_hidden_states))
        ck = heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
        bias = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)  # (1, L) added to every query's logits
        bias[:, -1] = math.log(self.repeats)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * q.shape[-1]).to(q.dtype)
        image, context = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        image = attn.to_out[1](attn.to_out[0](image))
        return image, context


def keep_one_zero_t5_token(prompt_embeds: torch.Tensor, zero_tokens: int) -> torch.Tensor:
    """(B, L + zero_tokens, D) prompt embeddings of a `StableDiffusion3Pipeline` without T5 (the CLIP tokens, then
    `zero_tokens` zeros) -> (B, L + 1, D): one zero token, for [`RepeatedTokenJointAttnProcessor`]`(zero_tokens)`."""
    return prompt_embeds[:, : prompt_embeds.shape[1] - zero_tokens + 1]


@contextlib.contextmanager
def repeated_last_context_token(transformer: torch.nn.Module, repeats: int):
    """Within the block, the joint attention layers of `transformer` (those with context projections; SD3.5's
    image-only second attention keeps its processor) run [`RepeatedTokenJointAttnProcessor`]`(repeats)`; their own
    processors come back after it."""
    joint = [m for m in transformer.modules() if getattr(m, "add_k_proj", None) is not None and hasattr(m, "processor")]
    saved = [m.processor for m in joint]
    processor = RepeatedTokenJointAttnProcessor(repeats)
    try:
        for m in joint:
            m.processor = processor
        yield
    finally:
        for m, p in zip(joint, saved):
            m.processor = p


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

    Without T5 (`text_encoder_3=None`) the stock pipeline appends `max_sequence_length` identical zero tokens to the
    prompt embeddings. With `collapse_zero_t5_tokens=True` (the default) the adapter keeps one of them and raises its
    attention logit by `log(max_sequence_length)` ([`RepeatedTokenJointAttnProcessor`], only inside the adapter's own
    model calls): the same velocities as the full sequence (float rounding aside), with 256 fewer context tokens in
    every rollout and training step. The saved pipelines are untouched: stock processors, stock inputs.
    """

    # the stock diffusers class of this family and its Hub tags (model cards, `load_ddpo_pipeline`)
    diffusers_pipeline_class_name = "StableDiffusion3Pipeline"
    transformer_class_name = "SD3Transformer2DModel"
    family_tags = ("stable-diffusion-3",)
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, pretrained_model_name_or_pipeline, *, collapse_zero_t5_tokens: bool = True, **kwargs):
        super().__init__(pretrained_model_name_or_pipeline, **kwargs)
        if not isinstance(collapse_zero_t5_tokens, bool):
            raise ValueError(f"collapse_zero_t5_tokens must be True or False, got {collapse_zero_t5_tokens!r}")
        # the zero T5 tokens exist only without T5; with T5 the prompt embeddings are the stock ones
        self.collapse_zero_t5_tokens = collapse_zero_t5_tokens and self.sd_pipeline.text_encoder_3 is None

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
        if self.collapse_zero_t5_tokens:
            embeds = keep_one_zero_t5_token(embeds, self.max_sequence_length)
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
        collapsed = repeated_last_context_token(transformer, self.max_sequence_length) \
            if self.collapse_zero_t5_tokens else contextlib.nullcontext()
        with collapsed:
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
