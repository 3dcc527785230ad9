"""Seeded, batched image generation from a diffusers pipeline (a Hub model, a local folder, a trained LoRA).

Every image has its own seed and its own initial noise drawn on the CPU, so an image depends only on (model, prompt,
seed, sampler settings): not on the batch size, the device count or the other prompts of its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass
class GenerationBatch:
    """One batch of generated images.

    Args:
        images (`torch.Tensor`): (B, 3, H, W) float32 in [0, 1], on the CPU.
        prompt_indices (`list[int]`): index of each image's prompt in the prompt list.
        image_indices (`list[int]`): index of each image among its prompt's images.
        seeds (`list[int]`): seed of each image's initial noise.
    """

    images: torch.Tensor
    prompt_indices: list[int]
    image_indices: list[int]
    seeds: list[int]


def image_seeds(num_prompts: int, images_per_prompt: int, seed: int = 0, prompt_seeds: Sequence[int] | None = None):
    """Seeds of every image, prompt after prompt: `seed + i * images_per_prompt + k` for image k of prompt i, or
    `prompt_seeds[i] + k` when per-prompt seeds are given (e.g. I2P's `sd_seed` column)."""
    if prompt_seeds is not None:
        if len(prompt_seeds) != num_prompts:
            raise ValueError(f"prompt_seeds has {len(prompt_seeds)} entries for {num_prompts} prompts")
        return [int(prompt_seeds[i]) + k for i in range(num_prompts) for k in range(images_per_prompt)]
    return [seed + i * images_per_prompt + k for i in range(num_prompts) for k in range(images_per_prompt)]


def unwrap_pipeline(pipeline):
    """The diffusers pipeline inside a `DefaultDDPOStableDiffusionPipeline` (or the pipeline itself)."""
    return getattr(pipeline, "sd_pipeline", pipeline)


def load_pipeline(model: str, lora: str | None = None, device: str | None = None, torch_dtype=None,
                  revision: str | None = None, disable_safety_checker: bool = True):
    """Load a diffusers text-to-image pipeline for evaluation.

    Args:
        model (`str`): Hub id or local folder of a diffusers pipeline (the embedded toy pipeline is the folder
            `trl_safediffusion.toy.toy_pipeline_path()`).
        lora (`str`, *optional*): folder or Hub id of LoRA weights (`pytorch_lora_weights.safetensors`, as
            `SafeDDPOGRPOTrainer.save_pretrained` writes) loaded with `load_lora_weights`.
        device (`str`, *optional*): defaults to "cuda" when available, else "cpu".
        torch_dtype (`torch.dtype`, *optional*): dtype to load the weights in.
        revision (`str`, *optional*): Hub revision.
        disable_safety_checker (`bool`, *optional*, defaults to `True`): drop SD's NSFW safety checker, which blacks
            out flagged images; published I2P numbers measure the model without it.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from diffusers import DiffusionPipeline

    kwargs = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if revision is not None:
        kwargs["revision"] = revision
    if disable_safety_checker:
        kwargs["safety_checker"] = None
    pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
    if lora:
        pipe.load_lora_weights(lora)
        logger.info("loaded LoRA weights from %s", lora)
    if disable_safety_checker and getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    return pipe.to(device)


def _latent_shape(pipe, height: int | None, width: int | None) -> tuple[tuple[int, int, int], int, int]:
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    sample = pipe.unet.config.sample_size
    sample_h, sample_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    height = height or sample_h * scale
    width = width or sample_w * scale
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of the VAE scale factor {scale}, got {height}x{width}")
    return (pipe.unet.config.in_channels, height // scale, width // scale), height, width


def iter_generate(
    pipeline,
    prompts: Sequence[str],
    images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    prompt_seeds: Sequence[int] | None = None,
    progress: bool = True,
) -> Iterator[GenerationBatch]:
    """Generate `images_per_prompt` images for every prompt, `batch_size` images per pipeline call, yielding batches
    (so that a 4,703-prompt I2P run never holds all images in memory). Arguments as in [`generate_images`]."""
    from tqdm.auto import tqdm

    if images_per_prompt < 1 or batch_size < 1 or num_inference_steps < 1:
        raise ValueError("images_per_prompt, batch_size and num_inference_steps must be >= 1")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string")
    pipe = unwrap_pipeline(pipeline)
    shape, height, width = _latent_shape(pipe, height, width)
    seeds = image_seeds(len(prompts), images_per_prompt, seed, prompt_seeds)
    jobs = [(i, k) for i in range(len(prompts)) for k in range(images_per_prompt)]
    device = pipe.device
    dtype = pipe.unet.dtype
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=len(jobs), desc="Generating", unit="img", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        chunk_seeds = seeds[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(s) for s in chunk_seeds]
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators])  # (B, C, h, w)
        batch_prompts = [prompts[i] for i, _ in chunk]
        kwargs = {}
        if negative_prompt:
            kwargs["negative_prompt"] = [negative_prompt] * len(chunk)
        with torch.no_grad():
            out = pipe(
                prompt=batch_prompts,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                latents=latents.to(device=device, dtype=dtype),
                generator=generators,
                output_type="pt",
                **kwargs,
            )
        images = out.images.float().clamp(0, 1).cpu()  # (B, 3, H, W)
        bar.update(len(chunk))
        yield GenerationBatch(
            images=images, prompt_indices=[i for i, _ in chunk], image_indices=[k for _, k in chunk], seeds=chunk_seeds
        )
    bar.close()


def generate_images(
    pipeline,
    prompts: Sequence[str],
    images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    prompt_seeds: Sequence[int] | None = None,
    progress: bool = True,
) -> GenerationBatch:
    r"""
    Generate images for a list of prompts, with one seed per image.

    Args:
        pipeline: a diffusers text-to-image pipeline (Stable Diffusion 1.x/2.x, or any with `latents`/`generator`
            arguments and `output_type="pt"`), or a `DefaultDDPOStableDiffusionPipeline` (its diffusers pipeline is used,
            LoRA adapters included).
        prompts (`list[str]`): the prompts.
        images_per_prompt (`int`, *optional*, defaults to `1`): images per prompt.
        seed (`int`, *optional*, defaults to `0`): base seed; image k of prompt i uses `seed + i * images_per_prompt + k`.
        batch_size (`int`, *optional*, defaults to `8`): images per pipeline call.
        num_inference_steps (`int`, *optional*, defaults to `50`), guidance_scale (`float`, *optional*, defaults to `7.5`),
        height, width (`int`, *optional*): sampler settings (size defaults to the UNet's).
        negative_prompt (`str`, *optional*): negative prompt for every image.
        prompt_seeds (`list[int]`, *optional*): per-prompt seeds replacing `seed` (image k uses `prompt_seeds[i] + k`).
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.

    Returns:
        `GenerationBatch`: all images (N, 3, H, W) in [0, 1] on the CPU, prompt after prompt, with their seeds.
    """
    batches = list(
        iter_generate(pipeline, prompts, images_per_prompt, seed, batch_size, num_inference_steps, guidance_scale,
                      height, width, negative_prompt, prompt_seeds, progress)
    )
    return GenerationBatch(
        images=torch.cat([b.images for b in batches]),
        prompt_indices=[i for b in batches for i in b.prompt_indices],
        image_indices=[k for b in batches for k in b.image_indices],
        seeds=[s for b in batches for s in b.seeds],
    )
