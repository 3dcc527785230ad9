"""The Stable Diffusion 3 / 3.5 adapter of the model interface (`DefaultDDPOStableDiffusion3Pipeline`).

The policy is Flow-GRPO's SDE step of the flow-matching scheduler ([`~trl_safediffusion.schedulers.flow_sde`]); the
trainers' `sample_eta` is its noise level a.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict

import torch

from ..schedulers.flow_sde import FLOW_GRPO_NOISE_LEVEL, flow_sde_step_std, flow_sde_step_with_logprob
from .base import DDPOPipelineOutput, DDPOStableDiffusionPipeline, StepDistribution
from .conditioning import Conditioning
from .lora import (
    add_lora_adapter,
    check_lora_arguments,
    fuse_lora_model,
    init_lora_weights_from_seed,
    load_lora_state,
    lora_adapter_metadata,
    peft_lora_state_dict,
)
from .precision import KeepsBaseWeights, _module_dtype
from .stable_diffusion import vae_decode

logger = logging.getLogger(__name__)

# the attention projections of the image tokens (SD's defaults); Flow-GRPO's SD3 runs also adapt the context ones
DEFAULT_SD3_LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
FLOW_GRPO_SD3_LORA_TARGET_MODULES = (
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
)


class DefaultDDPOStableDiffusion3Pipeline(KeepsBaseWeights, DDPOStableDiffusionPipeline):
    r"""
    Wraps a diffusers `StableDiffusion3Pipeline` (SD3, SD3.5; the T5 encoder may be absent, `text_encoder_3=None`) for
    DDPO / GRPO training of its `SD3Transformer2DModel` with Flow-GRPO's SDE policy.

    For this family the trainers' `eta` (`config.sample_eta`) is the SDE noise level a of
    [`~trl_safediffusion.schedulers.flow_sde_step_with_logprob`] (Flow-GRPO trains with 0.7; `sample_eta=1.0`, the
    DDIM default, is a noisier policy).

    Args:
        pretrained_model_name_or_pipeline (`str` or `StableDiffusion3Pipeline`): Hub id or local folder of a diffusers
            SD3 pipeline, or an already-built pipeline object.
        pretrained_model_revision (`str`, *optional*, defaults to `"main"`): Hub revision.
        use_lora (`bool`, *optional*, defaults to `True`): train LoRA adapters (peft) instead of the full transformer.
        lora_rank (`int`, *optional*, defaults to `4`): LoRA rank.
        lora_alpha (`float`, *optional*, defaults to `4`): LoRA alpha (scale = alpha / rank).
        lora_target_modules (`list[str]`, *optional*): transformer modules that get adapters; defaults to the image
            tokens' attention projections `to_q`, `to_k`, `to_v`, `to_out.0` (`FLOW_GRPO_SD3_LORA_TARGET_MODULES` adds
            the context projections, as Flow-GRPO does).
        trainable_modules (`str` or `list[str]`, *optional*): full fine-tuning of only the transformer parameters whose
            names contain one of these parts (a list or a comma-separated string). Needs `use_lora=False`.
        torch_dtype (`torch.dtype`, *optional*): dtype used to load the pipeline.
        sample_height (`int`, *optional*): image height of the rollouts; defaults to the transformer's native
            `sample_size * vae_scale_factor`. Must be a multiple of `vae_scale_factor * patch_size`.
        sample_width (`int`, *optional*): image width of the rollouts, as `sample_height`.
        noise_level (`float`, *optional*, defaults to `0.7`): the SDE noise level used when `eta` is not given
            (`__call__`, or `step_distribution(eta=None)`); >= 0.
        max_sequence_length (`int`, *optional*, defaults to `256`): T5 tokens of the prompt embeddings (zeros without
            T5), as the stock pipeline's argument.
        prompt_cache_size (`int`, *optional*, defaults to `4096`): prompts whose embeddings are cached.
    """

    model_component = "transformer"
    # the stock diffusers class of this family and its Hub tags (model cards, `load_ddpo_pipeline`)
    diffusers_pipeline_class_name = "StableDiffusion3Pipeline"
    family_tags = ("stable-diffusion-3",)

    def __init__(
        self,
        pretrained_model_name_or_pipeline,
        *,
        pretrained_model_revision: str = "main",
        use_lora: bool = True,
        lora_rank: int = 4,
        lora_alpha: float = 4,
        lora_target_modules=None,
        trainable_modules=None,
        torch_dtype: torch.dtype | None = None,
        sample_height: int | None = None,
        sample_width: int | None = None,
        noise_level: float = FLOW_GRPO_NOISE_LEVEL,
        max_sequence_length: int = 256,
        prompt_cache_size: int = 4096,
    ):
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        source = pretrained_model_name_or_pipeline
        if isinstance(source, StableDiffusion3Pipeline):
            self.sd_pipeline = source
            self.pretrained_model_name = getattr(source, "name_or_path", None) or getattr(
                source.config, "_name_or_path", None)
        elif isinstance(source, (str, os.PathLike)):
            kwargs = {"revision": pretrained_model_revision}
            if torch_dtype is not None:
                kwargs["torch_dtype"] = torch_dtype
            self.sd_pipeline = StableDiffusion3Pipeline.from_pretrained(str(source), **kwargs)
            self.pretrained_model_name = str(source)
        else:
            raise ValueError("pretrained_model_name_or_pipeline must be a Hub id, a local folder or a diffusers "
                             f"StableDiffusion3Pipeline, got {type(source).__name__}")
        if not isinstance(self.sd_pipeline.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"scheduler must be a FlowMatchEulerDiscreteScheduler (the flow SDE step reads its sigmas), got "
                f"{type(self.sd_pipeline.scheduler).__name__}; set pipeline.scheduler = "
                "FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)"
            )
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0 (the SDE noise level a, 0 for the ODE), got {noise_level}")
        parts = trainable_modules.split(",") if isinstance(trainable_modules, str) else list(trainable_modules or [])
        self.trainable_modules = [str(m).strip() for m in parts if str(m).strip()] or None
        if self.trainable_modules and use_lora:
            raise ValueError("trainable_modules selects transformer parameters for full fine-tuning; pass "
                             "use_lora=False with it, or choose the adapted modules with lora_target_modules")
        check_lora_arguments(lora_rank, lora_alpha)
        self.pretrained_model_revision = pretrained_model_revision
        self.use_lora = bool(use_lora)
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_target_modules = list(lora_target_modules or DEFAULT_SD3_LORA_TARGET_MODULES)
        self.noise_level = float(noise_level)
        self.max_sequence_length = int(max_sequence_length)
        self.sample_height = self._check_size("sample_height", sample_height)
        self.sample_width = self._check_size("sample_width", sample_width)

        for module in self.frozen_modules():
            module.requires_grad_(False)
        transformer = self.transformer
        transformer.requires_grad_(not self.use_lora)
        if self.trainable_modules:
            kept = 0
            for name, param in transformer.named_parameters():
                keep = any(part in name for part in self.trainable_modules)
                param.requires_grad_(keep)
                kept += int(keep)
            if not kept:
                raise ValueError(f"trainable_modules={self.trainable_modules} matches no transformer parameter name; "
                                 "use parts of the names in transformer.named_parameters(), e.g. 'attn'")
        if self.use_lora:
            add_lora_adapter(transformer, lora_rank, lora_alpha, self.lora_target_modules)
        # adapters created here hold no trained weights yet: the trainer re-draws them from its seed
        self.lora_weights_untrained = self.use_lora
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._prompt_cache_size = prompt_cache_size
        self._progress_bar_config: dict = {}
        self._original_dtypes: dict[str, torch.dtype] = {}
        self._original_tensors: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ components
    @property
    def model(self):
        return self.sd_pipeline.transformer

    @property
    def transformer(self):
        return self.sd_pipeline.transformer

    @property
    def unet(self):
        """TRL's name for the trainable model: here the transformer."""
        return self.sd_pipeline.transformer

    @property
    def vae(self):
        return self.sd_pipeline.vae

    @property
    def scheduler(self):
        return self.sd_pipeline.scheduler

    @property
    def tokenizer(self):
        return self.sd_pipeline.tokenizer

    @property
    def text_encoder(self):
        return self.sd_pipeline.text_encoder

    @property
    def autocast(self):
        return contextlib.nullcontext if self.use_lora else None

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _text_encoders(self) -> list[tuple[str, torch.nn.Module]]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [(n, getattr(self.sd_pipeline, n)) for n in names if getattr(self.sd_pipeline, n, None) is not None]

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae] + [module for _, module in self._text_encoders()]

    def _components(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        return (("vae", self.vae), *self._text_encoders(), ("transformer", self.transformer))

    def set_progress_bar_config(self, *args, **kwargs):
        self._progress_bar_config = dict(kwargs)
        self.sd_pipeline.set_progress_bar_config(*args, **kwargs)

    def get_trainable_layers(self):
        return self.transformer

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

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
    @torch.no_grad()
    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds (B, L, D), pooled_prompt_embeds (B, P))` from the stock pipeline's `encode_prompt`, cached
        per prompt (the text encoders are frozen)."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            embeds, _, pooled, _ = self.sd_pipeline.encode_prompt(
                prompt=missing, prompt_2=None, prompt_3=None, device=self.text_encoder.device,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            )
            for p, e, q in zip(missing, embeds, pooled):
                self._prompt_cache[p] = (e, q)
                if len(self._prompt_cache) > self._prompt_cache_size:
                    self._prompt_cache.popitem(last=False)
        rows = []
        for p in prompts:
            self._prompt_cache.move_to_end(p)
            rows.append(self._prompt_cache[p])
        return torch.stack([e for e, _ in rows]), torch.stack([q for _, q in rows])

    def encode_conditioning(self, prompts) -> Conditioning:
        """`{"prompt_embeds": (B, L, D), "pooled_prompt_embeds": (B, P)}` for `prompts` (see `encode_prompts`)."""
        embeds, pooled = self.encode_prompts(prompts)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def clear_prompt_cache(self):
        self._prompt_cache.clear()

    # ------------------------------------------------------------------ sampling
    def _set_timesteps_kwargs(self) -> dict:
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

    def set_timesteps(self, num_inference_steps: int, device=None) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device, **self._set_timesteps_kwargs())
        return self.scheduler.timesteps

    def step_std(self, num_inference_steps: int, eta: float | None) -> torch.Tensor:
        """(T,) std of each flow SDE step with noise level `eta` (see `flow_sde_step_std`)."""
        noise = self.noise_level if eta is None else eta
        return flow_sde_step_std(self.scheduler, num_inference_steps, noise, **self._set_timesteps_kwargs())

    def scheduler_step(self, model_output, timestep, sample, eta=None, prev_sample=None, generator=None):
        return flow_sde_step_with_logprob(
            self.scheduler, model_output, timestep, sample, noise_level=self.noise_level if eta is None else eta,
            prev_sample=prev_sample, generator=generator,
        )

    def predict_branches(self, transformer, latents, timesteps, conditioning, negative_conditioning):
        """The velocities `(uncond, cond)` from one batched transformer call (inputs in the model's dtype)."""
        both = {k: torch.cat([negative_conditioning[k], conditioning[k]]) for k in conditioning}
        return self.predict(transformer, torch.cat([latents, latents]), _repeat(timesteps, 2), both).chunk(2)

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

    def step_distribution(
        self,
        model,
        latents,
        timesteps,
        conditioning,
        negative_conditioning=None,
        guidance_scale: float = 1.0,
        eta: float | None = None,
        next_latents=None,
        generator=None,
        branches: bool = False,
        autocast=None,
    ) -> StepDistribution:
        """The flow SDE step of `model` at `latents` with its log-probability (see the interface's
        [`~DDPOStableDiffusionPipeline.step_distribution`]); `eta` is the SDE noise level (default `noise_level`),
        classifier-free guidance is `uncond + scale * (cond - uncond)` on the velocity, as the stock pipeline."""
        cfg = negative_conditioning is not None and guidance_scale > 1.0
        with (autocast or contextlib.nullcontext)():
            if cfg:
                uncond, cond = self.predict_branches(model, latents, timesteps, conditioning, negative_conditioning)
                velocity = uncond + guidance_scale * (cond - uncond)
            else:
                velocity = self.predict(model, latents, timesteps, conditioning)
        out = self.scheduler_step(velocity, timesteps, latents, eta=eta, prev_sample=next_latents, generator=generator)
        parts = None
        if branches and cfg:
            parts = tuple(
                StepDistribution.from_scheduler_output(
                    self.scheduler_step(branch, timesteps, latents, eta=eta, prev_sample=out.latents))
                for branch in (uncond, cond)
            )
        return StepDistribution.from_scheduler_output(out, parts)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode (undoing `scaling_factor` and `shift_factor`) to float32 images (B, 3, H, W) in [0, 1]."""
        return vae_decode(self.vae, latents).clamp(0, 1)

    def __call__(self, prompt, height=None, width=None, num_inference_steps: int = 28, guidance_scale: float = 7.0,
                 negative_prompt=None, num_images_per_prompt: int = 1, eta: float | None = None, generator=None,
                 latents=None, output_type: str = "pil", **kwargs) -> DDPOPipelineOutput:
        """TRL-compatible sampling call: images plus the per-step latents and log-probabilities (`eta` is the SDE
        noise level, default `noise_level`)."""
        if kwargs:
            logger.debug("ignoring unsupported pipeline arguments %s", sorted(kwargs))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
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
        images = out.images
        processor = self.sd_pipeline.image_processor
        if output_type in ("pil", "np"):
            images = processor.pt_to_numpy(images)
            images = processor.numpy_to_pil(images) if output_type == "pil" else images
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
        return DDPOPipelineOutput(images=images, latents=list(out.latents.unbind(1)),
                                  log_probs=list(out.log_probs.unbind(1)))

    # ------------------------------------------------------------------ saving
    def save_lora(self, output_dir: str):
        """Write `pytorch_lora_weights.safetensors` with the adapter config (rank, alpha), so that stock
        `StableDiffusion3Pipeline.load_lora_weights(output_dir)` reproduces the trained transformer."""
        from diffusers import StableDiffusion3Pipeline

        StableDiffusion3Pipeline.save_lora_weights(
            save_directory=output_dir,
            transformer_lora_layers=peft_lora_state_dict(self.transformer),
            safe_serialization=True,
            transformer_lora_adapter_metadata=lora_adapter_metadata(self.transformer),
        )

    def save_pretrained(self, output_dir: str, fuse_lora: bool = False):
        """Save in diffusers format: the full pipeline (full fine-tune, or LoRA with `fuse_lora=True`, the adapters
        merged), which stock `StableDiffusion3Pipeline.from_pretrained(output_dir)` loads, with the frozen components
        as the base had them (a base without T5 is loaded with `text_encoder_3=None, tokenizer_3=None`, as diffusers
        asks for any SD3 folder without T5); or the LoRA weights alone. Safetensors only."""
        os.makedirs(output_dir, exist_ok=True)
        if self.use_lora and not fuse_lora:
            self.save_lora(output_dir)
            return
        with self._base_dtypes():
            if not self.use_lora:
                self.sd_pipeline.save_pretrained(output_dir, safe_serialization=True)
                return
            from diffusers import StableDiffusion3Pipeline

            pipe = self.sd_pipeline
            clean = fuse_lora_model(self.transformer, dtype=self._original_dtypes.get("transformer"))
            components = {name: getattr(pipe, name, None) for name in (
                "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                "tokenizer_3", "image_encoder", "feature_extractor")}
            StableDiffusion3Pipeline(transformer=clean, **components).save_pretrained(output_dir,
                                                                                     safe_serialization=True)

    def save_checkpoint(self, models, weights, output_dir):
        """accelerate `save_state` pre-hook: the transformer (or its LoRA weights) in diffusers format."""
        if len(models) != 1:
            raise ValueError(f"expected one prepared model (the transformer), got {len(models)}")
        if self.use_lora:
            self.save_lora(output_dir)
        else:
            models[0].save_pretrained(os.path.join(output_dir, "transformer"), safe_serialization=True)
        if weights:
            weights.pop()  # we saved the model ourselves; accelerate must not save it again

    def load_checkpoint(self, models, input_dir):
        """accelerate `load_state` pre-hook: the inverse of `save_checkpoint`."""
        if len(models) != 1:
            raise ValueError(f"expected one prepared model (the transformer), got {len(models)}")
        model = models.pop()
        if self.use_lora:
            self.load_lora_into_transformer(input_dir, transformer=model)
        else:
            from diffusers import SD3Transformer2DModel

            loaded = SD3Transformer2DModel.from_pretrained(os.path.join(input_dir, "transformer"))
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    def init_lora_weights(self, seed: int):
        """Draw the LoRA adapters' initial weights from `seed` alone (see `lora.init_lora_weights_from_seed`)."""
        init_lora_weights_from_seed(self.transformer, seed)
        self.lora_weights_untrained = False

    def load_lora_into_transformer(self, input_dir: str, transformer=None):
        """Load `pytorch_lora_weights.safetensors` from `input_dir` into the existing adapter of the transformer."""
        from diffusers import StableDiffusion3Pipeline

        self.lora_weights_untrained = False
        state = StableDiffusion3Pipeline.lora_state_dict(input_dir)
        prefix = "transformer."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        load_lora_state(transformer if transformer is not None else self.transformer, state, input_dir)


def _repeat(timesteps, n: int):
    if torch.is_tensor(timesteps) and timesteps.ndim:
        return torch.cat([timesteps] * n)
    return timesteps
