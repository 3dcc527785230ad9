"""The Stable Diffusion 1.x / 2.x adapter of the model interface (`DefaultDDPOStableDiffusionPipeline`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict

import torch

from ..schedulers.ddim_with_logprob import ddim_step_std, ddim_step_with_logprob
from .base import DDPOPipelineOutput, DDPOStableDiffusionPipeline, RolloutOutput, StepDistribution
from .conditioning import Conditioning, as_conditioning, num_samples
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

# Plain `logging`: accelerate's logger raises if used before an Accelerator exists (a TRL v0.23.1 defect).
logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents (B, C, h, w) with a diffusers `AutoencoderKL`: undo `scaling_factor` (and `shift_factor`,
    if set), decode in the VAE's dtype and device, and return float32 images (B, 3, H, W) mapped from [-1, 1] to
    [0, 1] units, not clamped (so that gradients reach every pixel)."""
    scaled = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        scaled = scaled + shift
    return vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample.float() / 2 + 0.5


def _checked_size(name: str, value, default: int, factor: int) -> int:
    """`value` (or `default` when None) as an image side: a positive multiple of the VAE factor."""
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
        raise ValueError(
            f"{name} must be a positive multiple of the VAE downsampling factor {factor}, got {value!r}; e.g. "
            f"{default} (the UNet's native size)"
        )
    return value


def fuse_lora_unet(unet, dtype: torch.dtype | None = None):
    """A plain `UNet2DConditionModel` (no peft layers) whose weights are `unet`'s with its LoRA adapters merged, in
    `dtype` (by default the dtype of `unet`'s base weights), on the CPU (see `lora.fuse_lora_model`)."""
    return fuse_lora_model(unet, dtype=dtype)


class DefaultDDPOStableDiffusionPipeline(KeepsBaseWeights, DDPOStableDiffusionPipeline):
    r"""
    Wraps a diffusers `StableDiffusionPipeline` (SD 1.x / 2.x, epsilon or v-prediction) for DDPO/GRPO training.

    Args:
        pretrained_model_name (`str` or `StableDiffusionPipeline`): Hub id or local folder of a diffusers pipeline, or an
            already-built pipeline object.
        pretrained_model_revision (`str`, *optional*, defaults to `"main"`): Hub revision.
        use_lora (`bool`, *optional*, defaults to `True`): train LoRA adapters (peft) instead of the full UNet.
        lora_rank (`int`, *optional*, defaults to `4`): LoRA rank.
        lora_alpha (`float`, *optional*, defaults to `4`): LoRA alpha (scale = alpha / rank).
        lora_target_modules (`list[str]`, *optional*): UNet modules that get adapters; defaults to the attention
            projections `to_q`, `to_k`, `to_v`, `to_out.0`.
        trainable_modules (`str` or `list[str]`, *optional*): full fine-tuning of only the UNet parameters whose
            names contain one of these parts (a list, or a comma-separated string), e.g. `"attn2"` for the
            cross-attention layers, the layers through which the prompt reaches the UNet (ESD-x, Gandikota et al.
            2023, erases prompt-bound concepts this way). The rest of the UNet stays frozen. Needs `use_lora=False`.
        torch_dtype (`torch.dtype`, *optional*): dtype used to load the pipeline.
        prompt_cache_size (`int`, *optional*, defaults to `4096`): prompt embeddings cached (the text encoder is frozen).
        sample_height (`int`, *optional*): height of the training rollouts' images, a multiple of the VAE factor
            (default: the UNet's native size, 512 for SD 1.5).
        sample_width (`int`, *optional*): width of the training rollouts' images, as `sample_height`.
    """

    # the diffusers pipeline class this adapter wraps, loads and saves as (a name in `diffusers`), and the name of the
    # constructor argument that takes it (what the loading error names)
    diffusers_pipeline_class_name = "StableDiffusionPipeline"
    family_tags = ("stable-diffusion",)  # the family's Hub tags (model cards)
    default_guidance_scale = 7.5  # `__call__`'s, as the stock pipeline's
    accepts_prompt_embeds = True  # `__call__` takes precomputed `prompt_embeds` (the whole conditioning)
    _pretrained_argument = "pretrained_model_name"

    @classmethod
    def diffusers_pipeline_class(cls):
        """The diffusers pipeline class of this family (`StableDiffusionPipeline` here)."""
        import diffusers

        return getattr(diffusers, cls.diffusers_pipeline_class_name)

    def __init__(
        self,
        pretrained_model_name,
        *,
        pretrained_model_revision: str = "main",
        use_lora: bool = True,
        lora_rank: int = 4,
        lora_alpha: float = 4,
        lora_target_modules=None,
        trainable_modules=None,
        torch_dtype: torch.dtype | None = None,
        prompt_cache_size: int = 4096,
        sample_height: int | None = None,
        sample_width: int | None = None,
    ):
        from diffusers import DDIMScheduler

        self._requested_size = (sample_height, sample_width)

        pipeline_class = self.diffusers_pipeline_class()
        if isinstance(pretrained_model_name, pipeline_class):
            self.sd_pipeline = pretrained_model_name
            self.pretrained_model_name = getattr(pretrained_model_name, "name_or_path", None) or getattr(
                pretrained_model_name.config, "_name_or_path", None
            )
        elif isinstance(pretrained_model_name, (str, os.PathLike)):
            kwargs = {"revision": pretrained_model_revision}
            if torch_dtype is not None:
                kwargs["torch_dtype"] = torch_dtype
            self.sd_pipeline = pipeline_class.from_pretrained(str(pretrained_model_name), **kwargs)
            self.pretrained_model_name = str(pretrained_model_name)
        else:
            raise ValueError(
                f"{self._pretrained_argument} must be a Hub id, a local folder or a diffusers "
                f"{self.diffusers_pipeline_class_name}, got {type(pretrained_model_name).__name__}"
            )
        self._check_pipeline()
        parts = trainable_modules.split(",") if isinstance(trainable_modules, str) else list(trainable_modules or [])
        self.trainable_modules = [str(m).strip() for m in parts if str(m).strip()] or None
        if self.trainable_modules and use_lora:
            raise ValueError(
                "trainable_modules selects UNet parameters for full fine-tuning; pass use_lora=False with it, or keep "
                "use_lora=True and choose the adapted modules with lora_target_modules"
            )
        check_lora_arguments(lora_rank, lora_alpha)
        self.pretrained_model_revision = pretrained_model_revision
        self.use_lora = bool(use_lora)
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_target_modules = list(lora_target_modules or DEFAULT_LORA_TARGET_MODULES)

        # The policy is a DDIM sampler with eta > 0, whatever scheduler the checkpoint shipped with.
        self.sd_pipeline.scheduler = DDIMScheduler.from_config(self.sd_pipeline.scheduler.config)
        if "safety_checker" in self.sd_pipeline.components:
            self.sd_pipeline.safety_checker = None
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.sd_pipeline.unet.requires_grad_(not self.use_lora)
        if self.trainable_modules:
            kept = 0
            for name, param in self.sd_pipeline.unet.named_parameters():
                keep = any(part in name for part in self.trainable_modules)
                param.requires_grad_(keep)
                kept += int(keep)
            if not kept:
                raise ValueError(
                    f"trainable_modules={self.trainable_modules} matches no UNet parameter name; use parts of the names "
                    "in unet.named_parameters(), e.g. 'attn2' (cross-attention) or 'up_blocks'"
                )
        if self.use_lora:
            add_lora_adapter(self.sd_pipeline.unet, lora_rank, lora_alpha, self.lora_target_modules)
        # adapters created here hold no trained weights yet: the trainer re-draws them from its seed
        self.lora_weights_untrained = self.use_lora
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompt_cache_size = prompt_cache_size
        self._progress_bar_config: dict = {}
        # set by `cast_for_training`: each component's dtype before it was cast, and the CPU originals of the
        # frozen tensors that were cast to a narrower dtype (what the saved folders write back)
        self._original_dtypes: dict[str, torch.dtype] = {}
        self._original_tensors: dict[str, dict[str, torch.Tensor]] = {}

    def _check_pipeline(self):
        """Checks on the loaded pipeline before anything is changed: the sample size (a positive multiple of the VAE
        factor)."""
        factor = 2 ** (len(self.sd_pipeline.vae.config.block_out_channels) - 1)
        native = self.sd_pipeline.unet.config.sample_size * factor
        height, width = self._requested_size
        self.sample_height = _checked_size("sample_height", height, native, factor)
        self.sample_width = _checked_size("sample_width", width, native, factor)

    # ------------------------------------------------------------------ components
    @property
    def model(self):
        return self.sd_pipeline.unet

    @property
    def unet(self):
        return self.sd_pipeline.unet

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.text_encoder]

    @property
    def vae(self):
        return self.sd_pipeline.vae

    @property
    def tokenizer(self):
        return self.sd_pipeline.tokenizer

    @property
    def scheduler(self):
        return self.sd_pipeline.scheduler

    @property
    def text_encoder(self):
        return self.sd_pipeline.text_encoder

    @property
    def autocast(self):
        return contextlib.nullcontext if self.use_lora else None

    @property
    def device(self) -> torch.device:
        return self.sd_pipeline.unet.device

    def set_progress_bar_config(self, *args, **kwargs):
        self._progress_bar_config = dict(kwargs)
        self.sd_pipeline.set_progress_bar_config(*args, **kwargs)

    def get_trainable_layers(self):
        return self.sd_pipeline.unet

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.sd_pipeline.unet.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ dtypes
    def _components(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        return (("vae", self.vae), ("text_encoder", self.text_encoder), ("unet", self.unet))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts) -> torch.Tensor:
        """Text-encoder hidden states (B, L, D) for `prompts`, cached per prompt (the text encoder is frozen)."""
        return torch.stack(self._cached_rows(prompts, self._encode_text))

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's last hidden states (B, L, D) of `prompts`, uncached."""
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        te = self.text_encoder
        return te(tok.input_ids.to(te.device))[0]

    def _cached_rows(self, prompts, encode) -> list:
        """One value per prompt from the prompt cache (least recently used first out); `encode(missing)` returns
        the values of the prompts not cached yet, in order (any per-prompt value: a tensor row, a mapping of rows)."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        fresh = dict(zip(missing, encode(missing))) if missing else {}
        for p, value in fresh.items():
            self._prompt_cache[p] = value
            if len(self._prompt_cache) > self._prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        out = []
        for p in prompts:
            if p in self._prompt_cache:
                self._prompt_cache.move_to_end(p)
                out.append(self._prompt_cache[p])
            else:  # more new prompts than the cache holds
                out.append(fresh[p])
        return out

    def encode_conditioning(self, prompts) -> Conditioning:
        """`{"prompt_embeds": (B, L, D)}` for `prompts` (see `encode_prompts`)."""
        return {"prompt_embeds": self.encode_prompts(prompts)}

    def clear_prompt_cache(self):
        self._prompt_cache.clear()

    # ------------------------------------------------------------------ sampling
    def step_std(self, num_inference_steps: int, eta: float) -> torch.Tensor:
        return ddim_step_std(self.scheduler, num_inference_steps, eta)

    def scheduler_step(self, model_output, timestep, sample, eta=1.0, prev_sample=None, generator=None, noise=None):
        return ddim_step_with_logprob(
            self.scheduler, model_output, timestep, sample, eta=eta, prev_sample=prev_sample, generator=generator,
            noise=noise,
        )

    def unet_output(self, unet, latents, timesteps, conditioning: Conditioning) -> torch.Tensor:
        """The one call of the UNet on a conditioning mapping (inputs already cast): `prompt_embeds` are the
        encoder hidden states. A family whose UNet takes more conditioning overrides this."""
        return unet(latents, timesteps, conditioning["prompt_embeds"]).sample

    def predict(self, unet, latents, timesteps, prompt_embeds, negative_prompt_embeds, guidance_scale, cfg=True):
        """UNet prediction with classifier-free guidance: uncond + scale * (cond - uncond).

        `prompt_embeds` and `negative_prompt_embeds` are the conditioning: mappings, or SD's embeddings tensors.
        Inputs are cast to the UNet's parameter dtype (autocast, where active, then picks the compute dtype)."""
        if cfg:
            uncond, cond = self.predict_branches(unet, latents, timesteps, prompt_embeds, negative_prompt_embeds)
            return uncond + guidance_scale * (cond - uncond)
        dtype = _module_dtype(unet)
        cond = {k: v.to(dtype) for k, v in as_conditioning(prompt_embeds).items()}
        return self.unet_output(unet, latents.to(dtype), timesteps, cond)

    def predict_branches(self, unet, latents, timesteps, prompt_embeds, negative_prompt_embeds):
        """The two classifier-free-guidance branches `(uncond, cond)` from one batched UNet call, inputs cast as in
        `predict`."""
        dtype = _module_dtype(unet)
        latents = latents.to(dtype)
        cond, neg = as_conditioning(prompt_embeds), as_conditioning(negative_prompt_embeds)
        both = {k: torch.cat([neg[k].to(dtype), cond[k].to(dtype)]) for k in cond}
        t_in = torch.cat([timesteps, timesteps]) if torch.is_tensor(timesteps) and timesteps.ndim else timesteps
        return self.unet_output(unet, torch.cat([latents, latents]), t_in, both).chunk(2)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode to float32 images (B, 3, H, W) in [0, 1]."""
        return vae_decode(self.vae, latents).clamp(0, 1)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        height = height or self.sample_height
        width = width or self.sample_width
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of the VAE factor {factor}, got {height}x{width}")
        return (self.unet.config.in_channels, height // factor, width // factor)

    def set_timesteps(self, num_inference_steps: int, device=None) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps

    def scale_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.scheduler.init_noise_sigma

    def step_distribution(
        self,
        model,
        latents,
        timesteps,
        conditioning,
        negative_conditioning=None,
        guidance_scale: float = 1.0,
        eta: float = 1.0,
        next_latents=None,
        generator=None,
        branches: bool = False,
        autocast=None,
    ) -> StepDistribution:
        """The DDIM step of `model` at `latents` with its log-probability (see the interface's
        [`~DDPOStableDiffusionPipeline.step_distribution`]); `conditioning` holds what `unet_output` reads
        (`prompt_embeds`)."""
        pred, uncond, cond = self._guided_prediction(model, latents, timesteps, conditioning, negative_conditioning,
                                                     guidance_scale, autocast)
        out = self.scheduler_step(pred, timesteps, latents, eta=eta, prev_sample=next_latents, generator=generator)
        parts = None
        if branches and uncond is not None:
            parts = tuple(
                StepDistribution.from_scheduler_output(
                    self.scheduler_step(branch, timesteps, latents, eta=eta, prev_sample=out.latents)
                )
                for branch in (uncond, cond)
            )
        return StepDistribution.from_scheduler_output(out, parts)

    def _guided_prediction(self, model, latents, timesteps, conditioning, negative_conditioning, guidance_scale,
                           autocast):
        """`(pred, uncond, cond)`: the UNet's prediction at `latents`, with classifier-free guidance when given the
        negative conditioning and a scale > 1 (then also its two branches; otherwise those are None)."""
        cfg = negative_conditioning is not None and guidance_scale > 1.0
        with (autocast or contextlib.nullcontext)():
            model_in = self.scheduler.scale_model_input(latents, timesteps)
            if not cfg:
                return self.predict(model, model_in, timesteps, conditioning, None, 1.0, cfg=False), None, None
            uncond, cond = self.predict_branches(model, model_in, timesteps, conditioning, negative_conditioning)
            return uncond + guidance_scale * (cond - uncond), uncond, cond

    def deterministic_step(self, model, latents, index, next_index, conditioning, negative_conditioning=None,
                           guidance_scale: float = 1.0, autocast=None) -> torch.Tensor:
        """DDIM's deterministic update (eq. 12 with eta 0, arXiv 2010.02502) from the timestep of step `index` to that
        of step `next_index` (see the interface's [`~DDPOStableDiffusionPipeline.deterministic_step`]); the end of the
        schedule is where its last step goes, one schedule step below the last timestep (`final_alpha_cumprod`)."""
        timesteps = self.scheduler.timesteps
        if not 0 <= index < next_index <= len(timesteps):
            raise ValueError(f"deterministic_step needs 0 <= index < next_index <= {len(timesteps)} (the number of "
                             f"steps), got index={index}, next_index={next_index}")
        t = timesteps[index]
        if next_index < len(timesteps):
            prev = timesteps[next_index]
        else:
            prev = timesteps[-1] - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        pred, _, _ = self._guided_prediction(model, latents, t, conditioning, negative_conditioning, guidance_scale,
                                             autocast)
        return ddim_step_with_logprob(self.scheduler, pred, t, latents, eta=0.0, prev_timestep=prev).latents

    def __call__(
        self,
        prompt=None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        eta: float = 1.0,
        generator=None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        **kwargs,
    ) -> DDPOPipelineOutput:
        """TRL-compatible sampling call: images plus the per-step latents and log-probabilities (`guidance_scale`
        defaults to the family's stock default, `default_guidance_scale`)."""
        if kwargs:
            logger.debug("ignoring unsupported pipeline arguments %s", sorted(kwargs))
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if not self.accepts_prompt_embeds and (prompt_embeds is not None or negative_prompt_embeds is not None):
            raise ValueError(f"prompt_embeds and negative_prompt_embeds are not supported by {type(self).__name__} "
                             "(its conditioning has more than the text states); pass prompt, or call "
                             "rollout(encode_conditioning(prompts))")
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass prompt or prompt_embeds")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
            prompt_embeds = self._call_conditioning(prompts, height, width)
        if negative_prompt_embeds is None and guidance_scale > 1.0:
            neg = negative_prompt if negative_prompt is not None else ""
            negs = [neg] * num_samples(as_conditioning(prompt_embeds)) if isinstance(neg, str) else list(neg)
            negative_prompt_embeds = self._call_conditioning(negs, height, width)
        out = self.rollout(
            prompt_embeds,
            negative_prompt_embeds,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            initial_latents=latents,
            generators=generator,
            height=height,
            width=width,
            show_progress=not self._progress_bar_config.get("disable", False),
        )
        return self._pipeline_output(out, output_type)

    def _call_conditioning(self, prompts: list[str], height: int | None, width: int | None):
        """What `__call__` encodes `prompts` (and the negative prompts) to for images of `height` x `width`: the
        text encoder's states here (`encode_prompts`); a family whose conditioning depends on the image size (SDXL's
        time ids) overrides this."""
        return self.encode_prompts(prompts)

    def _pipeline_output(self, out: RolloutOutput, output_type: str) -> DDPOPipelineOutput:
        """TRL's output of a rollout, its images as `output_type` (`"pt"`, `"np"` or `"pil"`)."""
        images = out.images
        if output_type == "pil":
            images = self.sd_pipeline.image_processor.pt_to_numpy(images)
            images = self.sd_pipeline.image_processor.numpy_to_pil(images)
        elif output_type == "np":
            images = self.sd_pipeline.image_processor.pt_to_numpy(images)
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
        return DDPOPipelineOutput(
            images=images, latents=list(out.latents.unbind(1)), log_probs=list(out.log_probs.unbind(1))
        )

    # ------------------------------------------------------------------ saving
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights of the UNet in diffusers' key format (what `load_lora_weights` reads), float32 on the CPU."""
        from diffusers.utils import convert_state_dict_to_diffusers

        return convert_state_dict_to_diffusers(peft_lora_state_dict(self.unet))

    def lora_adapter_metadata(self) -> dict:
        """The peft config of the UNet's adapter as a JSON-ready dict (see `lora.lora_adapter_metadata`)."""
        return lora_adapter_metadata(self.unet)

    def save_lora(self, output_dir: str):
        """Write `pytorch_lora_weights.safetensors` with the LoRA config (rank, alpha) so that
        `StableDiffusionPipeline.load_lora_weights(output_dir)` (the family's pipeline class) reproduces the trained
        UNet exactly."""
        self.diffusers_pipeline_class().save_lora_weights(
            save_directory=output_dir,
            unet_lora_layers=self.lora_state_dict(),
            safe_serialization=True,
            unet_lora_adapter_metadata=self.lora_adapter_metadata(),
        )

    def save_pretrained(self, output_dir: str, fuse_lora: bool = False):
        """Save in diffusers format: the full pipeline (full fine-tune, or LoRA with `fuse_lora=True`), or the LoRA
        weights alone. Safetensors only.

        A full pipeline is saved as stock `StableDiffusionPipeline.from_pretrained(output_dir)` loads and samples it
        without a `torch_dtype`: the frozen VAE and text encoder exactly as the base had them (the originals kept by
        [`cast_for_training`], whatever the mixed precision of training), and the trained UNet (fused with its LoRA
        adapters, merged from the base's original weights) in the dtype of the base's UNet."""
        os.makedirs(output_dir, exist_ok=True)
        if self.use_lora and not fuse_lora:
            self.save_lora(output_dir)
            return
        with self._base_dtypes():
            if not self.use_lora:
                self.sd_pipeline.save_pretrained(output_dir, safe_serialization=True)
                return
            clean = fuse_lora_unet(self.unet, dtype=self._original_dtypes.get("unet"))
            self._pipeline_with_unet(clean).save_pretrained(output_dir, safe_serialization=True)

    def _pipeline_with_unet(self, unet):
        """A diffusers pipeline of this family with the frozen components and `unet` (what a fused save writes)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_checkpoint(self, models, weights, output_dir):
        """accelerate `save_state` pre-hook: the UNet (or its LoRA weights) in diffusers format."""
        if len(models) != 1:
            raise ValueError(f"expected one prepared model (the UNet), got {len(models)}")
        if self.use_lora:
            self.save_lora(output_dir)
        else:
            models[0].save_pretrained(os.path.join(output_dir, "unet"), safe_serialization=True)
        if weights:
            weights.pop()  # we saved the model ourselves; accelerate must not save it again

    def load_checkpoint(self, models, input_dir):
        """accelerate `load_state` pre-hook: the inverse of `save_checkpoint`."""
        if len(models) != 1:
            raise ValueError(f"expected one prepared model (the UNet), got {len(models)}")
        model = models.pop()
        if self.use_lora:
            self.load_lora_into_unet(input_dir, unet=model)
        else:
            from diffusers import UNet2DConditionModel

            loaded = UNet2DConditionModel.from_pretrained(os.path.join(input_dir, "unet"))
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    def init_lora_weights(self, seed: int):
        """Draw the LoRA adapters' initial weights from `seed` alone (peft's "gaussian" init: A ~ N(0, 1/r^2),
        B = 0), whatever the global random state was when the adapters were created. The global RNG is left as it was
        (see `lora.init_lora_weights_from_seed`).
        """
        init_lora_weights_from_seed(self.unet, seed)
        self.lora_weights_untrained = False

    def load_lora_into_unet(self, input_dir: str, unet=None):
        """Load `pytorch_lora_weights.safetensors` from `input_dir` into the existing adapter of the UNet."""
        self.lora_weights_untrained = False
        state, _ = self.diffusers_pipeline_class().lora_state_dict(input_dir)
        unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
        load_lora_state(unet if unet is not None else self.unet, unet_state, input_dir)


# names that lived here before the model interface moved to `base` (their import path keeps working)
__all__ = [
    "DDPOPipelineOutput",
    "DDPOStableDiffusionPipeline",
    "DefaultDDPOStableDiffusionPipeline",
    "RolloutOutput",
    "StepDistribution",
    "fuse_lora_unet",
    "vae_decode",
]
