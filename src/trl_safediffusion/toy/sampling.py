"""The toy world's one sampler: batched images from a toy pipeline with per-image noise seeds.

The demo's evaluations, `python -m trl_safediffusion.toy.evaluate` and the toy experiments under `research/toy/` all
sample with [`sample_toy_images`], so that their figures are comparable: image i of a call starts from the noise of
[`noise_seed`]`(seed, i)`, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .pipeline import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS

NOISE_SEED_STRIDE = 100_003


def noise_seed(seed: int, index: int) -> int:
    """Seed of the initial noise of image `index` in a [`sample_toy_images`] call with `seed`."""
    return seed * NOISE_SEED_STRIDE + index


@torch.no_grad()
def sample_toy_images(
    pipe,
    prompts: Sequence[str | Mapping],
    num_inference_steps: int = TOY_NUM_INFERENCE_STEPS,
    guidance_scale: float = TOY_GUIDANCE_SCALE,
    seed: int = 0,
    batch_size: int = 72,
    generator: torch.Generator | None = None,
    progress_bar=None,
    **pipe_kwargs,
) -> torch.Tensor:
    r"""
    Images of a toy pipeline for `prompts`, `batch_size` per pipeline call (the pipeline's own scheduler: DDIM, eta 0
    unless `pipe_kwargs` say otherwise, for the Stable Diffusion one; Euler for the flow-matching one), with
    classifier-free guidance.

    Args:
        pipe: a `diffusers.StableDiffusionPipeline` or `StableDiffusion3Pipeline` (e.g.
            [`~trl_safediffusion.toy.load_toy_pipeline`], [`~trl_safediffusion.toy.load_toy_flow_pipeline`]).
        prompts (`list[str]` or `list[dict]`): prompts, or prompt-set rows with a `prompt` key.
        num_inference_steps (`int`, *optional*, defaults to `TOY_NUM_INFERENCE_STEPS`): sampler steps.
        guidance_scale (`float`, *optional*, defaults to `TOY_GUIDANCE_SCALE`): classifier-free guidance.
        seed (`int`, *optional*, defaults to `0`): image i starts from the noise of `noise_seed(seed, i)`, so an
            image does not depend on the batch size or on the other prompts.
        batch_size (`int`, *optional*, defaults to `72`): images per pipeline call.
        generator (`torch.Generator`, *optional*): one generator that every batch draws from instead of `seed` (the
            noise then depends on `batch_size`); the scheme of `python -m trl_safediffusion.toy.evaluate`.
        progress_bar (*optional*): a tqdm bar that advances by each batch's images.
        pipe_kwargs: passed to every pipeline call (e.g. `eta`, `negative_prompt`, `callback_on_step_end`).

    Returns:
        `torch.Tensor`: (N, 3, H, W) float32 images in [0, 1], on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = [p if isinstance(p, str) else p["prompt"] for p in prompts]
    images = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        if generator is None:
            gens = [torch.Generator().manual_seed(noise_seed(seed, start + i)) for i in range(len(chunk))]
        else:
            gens = generator
        out = _call(pipe, chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    generator=gens, output_type="pt", **pipe_kwargs)
        images.append(out.images.float().cpu())
        if progress_bar is not None:
            progress_bar.update(len(chunk))
    return torch.cat(images)


def _call(pipe, prompts: list[str], **kwargs):
    """`pipe(prompts, **kwargs)`; for a `StableDiffusion3Pipeline` without T5, the same call with its zero T5 tokens
    run as one token with a log(n) attention bias (the same images, float rounding aside, for ~10x less compute on
    the toy flow pipeline: [`~trl_safediffusion.pipelines.stable_diffusion_3.RepeatedTokenJointAttnProcessor`])."""
    from diffusers import StableDiffusion3Pipeline

    if not isinstance(pipe, StableDiffusion3Pipeline) or pipe.text_encoder_3 is not None:
        return pipe(prompts, **kwargs)
    from ..pipelines.stable_diffusion_3 import keep_one_zero_t5_token, repeated_last_context_token

    zeros = kwargs.pop("max_sequence_length", 256)
    negative = kwargs.pop("negative_prompt", None)
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=negative, device=pipe.transformer.device,
        do_classifier_free_guidance=kwargs.get("guidance_scale", 7.0) > 1.0, max_sequence_length=zeros,
    )
    with repeated_last_context_token(pipe.transformer, zeros):
        return pipe(
            prompt_embeds=keep_one_zero_t5_token(embeds, zeros), pooled_prompt_embeds=pooled,
            negative_prompt_embeds=None if negative_embeds is None else keep_one_zero_t5_token(negative_embeds, zeros),
            negative_pooled_prompt_embeds=negative_pooled, max_sequence_length=zeros, **kwargs,
        )
