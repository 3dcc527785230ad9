"""The FLUX.1 adapter of the model interface (`DefaultDDPOFluxPipeline`).

The policy is Flow-GRPO's SDE step of the flow-matching scheduler ([`~trl_safediffusion.schedulers.flow_sde`]); the
trainers' `sample_eta` is its noise level a. FLUX.1-dev is guidance-distilled: its transformer takes the guidance as an
input (the adapter's `guidance=`) and there is no classifier-free guidance, so `sample_guidance_scale` must be 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict

import numpy as np
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

# the attention projections (the double blocks' image stream and the single blocks' to_q / to_k / to_v)
DEFAULT_FLUX_LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
_COMPONENTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
               "feature_extractor")


class DefaultDDPOFluxPipeline(KeepsBaseWeights, DDPOStableDiffusionPipeline):
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
        pretrained_model_name_or_pipeline (`str` or `FluxPipeline`): Hub id or local folder of a diffusers FLUX
            pipeline, or an already-built pipeline object.
        pretrained_model_revision (`str`, *optional*, defaults to `"main"`): Hub revision.
        use_lora (`bool`, *optional*, defaults to `True`): train LoRA adapters (peft) instead of the full transformer.
        lora_rank (`int`, *optional*, defaults to `4`): LoRA rank.
        lora_alpha (`float`, *optional*, defaults to `4`): LoRA alpha (scale = alpha / rank).
        lora_target_modules (`list[str]`, *optional*): transformer modules that get adapters; defaults to the
            attention projections `to_q`, `to_k`, `to_v`, `to_out.0`.
        trainable_modules (`str` or `list[str]`, *optional*): full fine-tuning of only the transformer parameters whose
            names contain one of these parts (a list or a comma-separated string). Needs `use_lora=False`.
        torch_dtype (`torch.dtype`, *optional*): dtype used to load the pipeline.
        sample_height (`int`, *optional*): image height of the rollouts; defaults to the stock pipeline's
            `default_sample_size * vae_scale_factor` (1024 for FLUX.1). Must be a multiple of `vae_scale_factor * 2`.
        sample_width (`int`, *optional*): image width of the rollouts, as `sample_height`.
        guidance (`float`, *optional*, defaults to `3.5`): the distilled guidance given to a transformer with
            `guidance_embeds` (the stock pipeline's `guidance_scale`); unused without.
        noise_level (`float`, *optional*, defaults to `0.7`): the SDE noise level used when `eta` is not given
            (`__call__`, or `step_distribution(eta=None)`); >= 0.
        max_sequence_length (`int`, *optional*, defaults to `512`): T5 tokens of the prompt embeddings, as the stock
            pipeline's argument (at most 512).
        prompt_cache_size (`int`, *optional*, defaults to `4096`): prompts whose embeddings are cached.
    """

    model_component = "transformer"
    diffusers_pipeline_class_name = "FluxPipeline"
    family_tags = ("flux",)

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
        guidance: float = 3.5,
        noise_level: float = FLOW_GRPO_NOISE_LEVEL,
        max_sequence_length: int = 512,
        prompt_cache_size: int = 4096,
    ):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        source = pretrained_model_name_or_pipeline
        if isinstance(source, FluxPipeline):
            self.sd_pipeline = source
            self.pretrained_model_name = getattr(source, "name_or_path", None) or getattr(
                source.config, "_name_or_path", None)
        elif isinstance(source, (str, os.PathLike)):
            kwargs = {"revision": pretrained_model_revision}
            if torch_dtype is not None:
                kwargs["torch_dtype"] = torch_dtype
            self.sd_pipeline = FluxPipeline.from_pretrained(str(source), **kwargs)
            self.pretrained_model_name = str(source)
        else:
            raise ValueError("pretrained_model_name_or_pipeline must be a Hub id, a local folder or a diffusers "
                             f"FluxPipeline, got {type(source).__name__}")
        if not isinstance(self.sd_pipeline.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"scheduler must be a FlowMatchEulerDiscreteScheduler (the flow SDE step reads its sigmas), got "
                f"{type(self.sd_pipeline.scheduler).__name__}; set pipeline.scheduler = "
                "FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)"
            )
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0 (the SDE noise level a, 0 for the ODE), got {noise_level}")
        if not guidance >= 0:
            raise ValueError(f"guidance must be >= 0 (FLUX.1-dev's distilled guidance, e.g. 3.5), got {guidance}")
        if not isinstance(max_sequence_length, int) or not 0 < max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be an integer in [1, 512] (T5 tokens), got "
                             f"{max_sequence_length!r}")
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
        self.lora_target_modules = list(lora_target_modules or DEFAULT_FLUX_LORA_TARGET_MODULES)
        self.guidance = float(guidance)
        self.noise_level = float(noise_level)
        self.max_sequence_length = max_sequence_length
        self.sample_height = self._check_size("sample_height", sample_height)
        self.sample_width = self._check_size("sample_width", sample_width)
        self._resolution = (self.sample_height, self.sample_width)

        for module in self.frozen_modules():
            module.requires_grad_(False).eval()  # frozen: no dropout either (a T5 built from a config has 0.1)
        self.transformer.requires_grad_(not self.use_lora)
        if self.trainable_modules:
            self._select_trainable(self.trainable_modules)
        if self.use_lora:
            add_lora_adapter(self.transformer, lora_rank, lora_alpha, self.lora_target_modules)
        # adapters created here hold no trained weights yet: the trainer re-draws them from its seed
        self.lora_weights_untrained = self.use_lora
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._prompt_cache_size = prompt_cache_size
        self._progress_bar_config: dict = {}
        self._original_dtypes: dict[str, torch.dtype] = {}
        self._original_tensors: dict[str, dict[str, torch.Tensor]] = {}

    def _select_trainable(self, parts: list[str]):
        kept = 0
        for name, param in self.transformer.named_parameters():
            keep = any(part in name for part in parts)
            param.requires_grad_(keep)
            kept += int(keep)
        if not kept:
            raise ValueError(f"trainable_modules={parts} matches no transformer parameter name; use parts of the "
                             "names in transformer.named_parameters(), e.g. 'attn'")

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

    def _components(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        names = ("vae", "text_encoder", "text_encoder_2")
        frozen = tuple((n, getattr(self.sd_pipeline, n)) for n in names if getattr(self.sd_pipeline, n, None) is not None)
        return (*frozen, ("transformer", self.transformer))

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [module for name, module in self._components() if name != "transformer"]

    def set_progress_bar_config(self, *args, **kwargs):
        self._progress_bar_config = dict(kwargs)
        self.sd_pipeline.set_progress_bar_config(*args, **kwargs)

    def get_trainable_layers(self):
        return self.transformer

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

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
    @torch.no_grad()
    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds (B, L, D) T5 states, pooled_prompt_embeds (B, P) CLIP pooled)` from the stock pipeline's
        `encode_prompt`, cached per prompt (the text encoders are frozen)."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            embeds, pooled, _ = self.sd_pipeline.encode_prompt(
                prompt=missing, prompt_2=None, device=self.text_encoder.device,
                max_sequence_length=self.max_sequence_length,
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
    def _set_timesteps_kwargs(self, num_inference_steps: int) -> dict:
        """The stock pipeline's `sigmas` and resolution-dependent `mu` (used by a scheduler with
        `use_dynamic_shifting`) for the current resolution."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler.config
        mu = calculate_shift(self.latent_shape()[0], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def set_timesteps(self, num_inference_steps: int, device=None) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device,
                                     **self._set_timesteps_kwargs(num_inference_steps))
        return self.scheduler.timesteps

    def step_std(self, num_inference_steps: int, eta: float | None) -> torch.Tensor:
        """(T,) std of each flow SDE step with noise level `eta` (see `flow_sde_step_std`)."""
        noise = self.noise_level if eta is None else eta
        return flow_sde_step_std(self.scheduler, num_inference_steps, noise,
                                 **self._set_timesteps_kwargs(num_inference_steps))

    def scheduler_step(self, model_output, timestep, sample, eta=None, prev_sample=None, generator=None):
        return flow_sde_step_with_logprob(
            self.scheduler, model_output, timestep, sample, noise_level=self.noise_level if eta is None else eta,
            prev_sample=prev_sample, generator=generator,
        )

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
        """The flow SDE step of `model` at the packed `latents` with its log-probability (see the interface's
        [`~DDPOStableDiffusionPipeline.step_distribution`]); `eta` is the SDE noise level (default `noise_level`).
        FLUX has no classifier-free guidance: `negative_conditioning` is ignored, `guidance_scale > 1` is an error and
        there are no `branches`."""
        if guidance_scale > 1.0:
            raise ValueError(
                f"sample_guidance_scale must be 1 for FLUX (no classifier-free guidance), got {guidance_scale}; the "
                f"distilled guidance of FLUX.1-dev is DefaultDDPOFluxPipeline(guidance=...) (now {self.guidance})"
            )
        with (autocast or contextlib.nullcontext)():
            velocity = self.predict(model, latents, timesteps, conditioning)
        out = self.scheduler_step(velocity, timesteps, latents, eta=eta, prev_sample=next_latents, generator=generator)
        return StepDistribution.from_scheduler_output(out)

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
        if kwargs:
            logger.debug("ignoring unsupported pipeline arguments %s", sorted(kwargs))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
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
        `FluxPipeline.load_lora_weights(output_dir)` reproduces the trained transformer."""
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(
            save_directory=output_dir,
            transformer_lora_layers=peft_lora_state_dict(self.transformer),
            safe_serialization=True,
            transformer_lora_adapter_metadata=lora_adapter_metadata(self.transformer),
        )

    def save_pretrained(self, output_dir: str, fuse_lora: bool = False):
        """Save in diffusers format: the full pipeline (full fine-tune, or LoRA with `fuse_lora=True`, the adapters
        merged), which stock `FluxPipeline.from_pretrained(output_dir)` loads, with the frozen components as the base
        had them; or the LoRA weights alone. Safetensors only."""
        os.makedirs(output_dir, exist_ok=True)
        if self.use_lora and not fuse_lora:
            self.save_lora(output_dir)
            return
        with self._base_dtypes():
            if not self.use_lora:
                self.sd_pipeline.save_pretrained(output_dir, safe_serialization=True)
                return
            from diffusers import FluxPipeline

            clean = fuse_lora_model(self.transformer, dtype=self._original_dtypes.get("transformer"))
            components = {name: getattr(self.sd_pipeline, name, None) for name in _COMPONENTS}
            FluxPipeline(transformer=clean, **components).save_pretrained(output_dir, safe_serialization=True)

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
            from diffusers import FluxTransformer2DModel

            loaded = FluxTransformer2DModel.from_pretrained(os.path.join(input_dir, "transformer"))
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    def init_lora_weights(self, seed: int):
        """Draw the LoRA adapters' initial weights from `seed` alone (see `lora.init_lora_weights_from_seed`)."""
        init_lora_weights_from_seed(self.transformer, seed)
        self.lora_weights_untrained = False

    def load_lora_into_transformer(self, input_dir: str, transformer=None):
        """Load `pytorch_lora_weights.safetensors` from `input_dir` into the existing adapter of the transformer."""
        from diffusers import FluxPipeline

        self.lora_weights_untrained = False
        state = FluxPipeline.lora_state_dict(input_dir)
        prefix = "transformer."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        load_lora_state(transformer if transformer is not None else self.transformer, state, input_dir)
