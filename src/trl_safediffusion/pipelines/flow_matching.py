"""What the flow-matching adapters (SD3 / SD3.5, FLUX.1) share: [`FlowMatchingAdapter`].

The policy is Flow-GRPO's SDE step of the flow-matching scheduler ([`~trl_safediffusion.schedulers.flow_sde`]); the
trainers' `sample_eta` is its noise level a. A family's adapter subclasses `FlowMatchingAdapter` and supplies its
stock classes (`diffusers_pipeline_class_name`, `transformer_class_name`), its text encoders (`text_encoder_names`,
`_encode_text`), its resolutions (`_check_size`, `latent_shape`), the timesteps' shift (`_set_timesteps_kwargs`), the
transformer call (`predict`), `decode_latents` and `__call__`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict

import torch

from ..schedulers.flow_sde import FLOW_GRPO_NOISE_LEVEL, flow_ode_jump, flow_sde_step_std, flow_sde_step_with_logprob
from . import lora as _lora
from .base import DDPOPipelineOutput, DDPOStableDiffusionPipeline, RolloutOutput, StepDistribution
from .conditioning import Conditioning
from .precision import KeepsBaseWeights

logger = logging.getLogger(__name__)

# the attention projections of the image tokens
DEFAULT_FLOW_LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


def _diffusers_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def _pipeline_part(name: str, doc: str | None = None) -> property:
    """A read-only property for the wrapped pipeline's component `name`."""
    return property(lambda self: getattr(self.sd_pipeline, name), doc=doc)


def _repeat(timesteps, n: int):
    if torch.is_tensor(timesteps) and timesteps.ndim:
        return torch.cat([timesteps] * n)
    return timesteps


class FlowMatchingAdapter(KeepsBaseWeights, DDPOStableDiffusionPipeline):
    r"""
    Base of the adapters that train the transformer of a flow-matching diffusers pipeline with Flow-GRPO's SDE
    policy: the trainers' `eta` (`config.sample_eta`) is the SDE noise level a of
    [`~trl_safediffusion.schedulers.flow_sde_step_with_logprob`] (Flow-GRPO trains with 0.7).

    Args:
        pretrained_model_name_or_pipeline (`str` or diffusers pipeline): Hub id or local folder of a pipeline of the
            family's class (`diffusers_pipeline_class_name`), or an already-built pipeline object.
        pretrained_model_revision (`str`, *optional*, defaults to `"main"`): Hub revision.
        use_lora (`bool`, *optional*, defaults to `True`): train LoRA adapters (peft) instead of the full transformer.
        lora_rank (`int`, *optional*, defaults to `4`): LoRA rank.
        lora_alpha (`float`, *optional*, defaults to `4`): LoRA alpha (scale = alpha / rank).
        lora_target_modules (`list[str]`, *optional*): transformer modules that get adapters; defaults to the
            attention projections `to_q`, `to_k`, `to_v`, `to_out.0`.
        trainable_modules (`str` or `list[str]`, *optional*): full fine-tuning of only the transformer parameters whose
            names contain one of these parts (a list or a comma-separated string). Needs `use_lora=False`.
        torch_dtype (`torch.dtype`, *optional*): dtype used to load the pipeline.
        sample_height (`int`, *optional*): image height of the rollouts; defaults to the family's native size.
        sample_width (`int`, *optional*): image width of the rollouts, as `sample_height`.
        noise_level (`float`, *optional*, defaults to `0.7`): the SDE noise level used when `eta` is not given
            (`__call__`, or `step_distribution(eta=None)`); >= 0.
        max_sequence_length (`int`, *optional*, defaults to `256`): T5 tokens of the prompt embeddings, as the stock
            pipeline's argument.
        prompt_cache_size (`int`, *optional*, defaults to `4096`): prompts whose embeddings are cached.
    """

    model_component = "transformer"
    transformer_class_name: str | None = None  # the diffusers class of the trained transformer (full checkpoints)
    text_encoder_names: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    eval_frozen_modules = False  # whether the frozen components are also put in eval mode (no dropout)

    def __init__(self, pretrained_model_name_or_pipeline, *, pretrained_model_revision: str = "main",
                 use_lora: bool = True, lora_rank: int = 4, lora_alpha: float = 4, lora_target_modules=None,
                 trainable_modules=None, torch_dtype: torch.dtype | None = None, sample_height: int | None = None,
                 sample_width: int | None = None, noise_level: float = FLOW_GRPO_NOISE_LEVEL,
                 max_sequence_length: int = 256, prompt_cache_size: int = 4096):
        self._load(pretrained_model_name_or_pipeline, pretrained_model_revision, torch_dtype)
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0 (the SDE noise level a, 0 for the ODE), got {noise_level}")
        parts = trainable_modules.split(",") if isinstance(trainable_modules, str) else list(trainable_modules or [])
        self.trainable_modules = [str(m).strip() for m in parts if str(m).strip()] or None
        if self.trainable_modules and use_lora:
            raise ValueError("trainable_modules selects transformer parameters for full fine-tuning; pass "
                             "use_lora=False with it, or choose the adapted modules with lora_target_modules")
        _lora.check_lora_arguments(lora_rank, lora_alpha)
        self.pretrained_model_revision = pretrained_model_revision
        self.use_lora, self.lora_rank, self.lora_alpha = bool(use_lora), lora_rank, lora_alpha
        self.lora_target_modules = list(lora_target_modules or DEFAULT_FLOW_LORA_TARGET_MODULES)
        self.noise_level = float(noise_level)
        self.max_sequence_length = int(max_sequence_length)
        self.sample_height = self._check_size("sample_height", sample_height)
        self.sample_width = self._check_size("sample_width", sample_width)
        self._freeze_and_adapt()
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._prompt_cache_size = prompt_cache_size
        self._progress_bar_config: dict = {}
        self._original_dtypes: dict[str, torch.dtype] = {}
        self._original_tensors: dict[str, dict[str, torch.Tensor]] = {}

    def _load(self, source, revision: str, torch_dtype):
        """Wrap `source` (a pipeline of the family, or a Hub id / folder to load one from) with a flow-matching
        scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipeline_class = _diffusers_class(self.diffusers_pipeline_class_name)
        if isinstance(source, pipeline_class):
            self.sd_pipeline = source
            self.pretrained_model_name = getattr(source, "name_or_path", None) or getattr(
                source.config, "_name_or_path", None)
        elif isinstance(source, (str, os.PathLike)):
            kwargs = {"revision": revision} if torch_dtype is None else {"revision": revision, "torch_dtype": torch_dtype}
            self.sd_pipeline = pipeline_class.from_pretrained(str(source), **kwargs)
            self.pretrained_model_name = str(source)
        else:
            raise ValueError("pretrained_model_name_or_pipeline must be a Hub id, a local folder or a diffusers "
                             f"{self.diffusers_pipeline_class_name}, got {type(source).__name__}")
        if not isinstance(self.sd_pipeline.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"scheduler must be a FlowMatchEulerDiscreteScheduler (the flow SDE step reads its sigmas), got "
                f"{type(self.sd_pipeline.scheduler).__name__}; set pipeline.scheduler = "
                "FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)"
            )

    def _freeze_and_adapt(self):
        """Freeze the text encoders and the VAE, then make the transformer (its LoRA adapters, its selected
        parameters, or all of it) trainable."""
        for module in self.frozen_modules():
            module.requires_grad_(False)
            if self.eval_frozen_modules:
                module.eval()
        self.transformer.requires_grad_(not self.use_lora)
        if self.trainable_modules:
            flags = [(param, any(part in name for part in self.trainable_modules))
                     for name, param in self.transformer.named_parameters()]
            for param, keep in flags:
                param.requires_grad_(keep)
            if not any(keep for _, keep in flags):
                raise ValueError(f"trainable_modules={self.trainable_modules} matches no transformer parameter name; "
                                 "use parts of the names in transformer.named_parameters(), e.g. 'attn'")
        if self.use_lora:
            _lora.add_lora_adapter(self.transformer, self.lora_rank, self.lora_alpha, self.lora_target_modules)
        # adapters created here hold no trained weights yet: the trainer re-draws them from its seed
        self.lora_weights_untrained = self.use_lora

    # ------------------------------------------------------------------ components
    model = transformer = _pipeline_part("transformer")
    unet = _pipeline_part("transformer", "TRL's name for the trainable model: here the transformer.")
    vae, scheduler = _pipeline_part("vae"), _pipeline_part("scheduler")
    tokenizer, text_encoder = _pipeline_part("tokenizer"), _pipeline_part("text_encoder")

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
        pipe = self.sd_pipeline
        return [(n, getattr(pipe, n)) for n in self.text_encoder_names if getattr(pipe, n, None) is not None]

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

    # ------------------------------------------------------------------ text
    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds (B, L, D), pooled_prompt_embeds (B, P))` of `prompts` from the stock `encode_prompt`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _encode_text()")

    @torch.no_grad()
    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds (B, L, D), pooled_prompt_embeds (B, P))` from the stock pipeline's `encode_prompt`, cached
        per prompt (the text encoders are frozen)."""
        prompts, cache = list(prompts), self._prompt_cache
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            for p, *row in zip(missing, *self._encode_text(missing)):
                cache[p] = tuple(row)
                if len(cache) > self._prompt_cache_size:
                    cache.popitem(last=False)
        for p in prompts:
            cache.move_to_end(p)
        return torch.stack([cache[p][0] for p in prompts]), torch.stack([cache[p][1] for p in prompts])

    def encode_conditioning(self, prompts) -> Conditioning:
        """`{"prompt_embeds": (B, L, D), "pooled_prompt_embeds": (B, P)}` for `prompts` (see `encode_prompts`)."""
        embeds, pooled = self.encode_prompts(prompts)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def clear_prompt_cache(self):
        self._prompt_cache.clear()

    # ------------------------------------------------------------------ sampling
    def _set_timesteps_kwargs(self, num_inference_steps: int) -> dict:
        """Extra arguments of the scheduler's `set_timesteps` (`sigmas`, the shift `mu`) at the current resolution."""
        return {}

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

    def predict(self, transformer, latents, timesteps, conditioning) -> torch.Tensor:
        """The transformer's velocity at `latents` and scheduler `timesteps` (sigma * 1000, a scalar or (B,))."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict()")

    def predict_branches(self, transformer, latents, timesteps, conditioning, negative_conditioning):
        """The velocities `(uncond, cond)` from one batched transformer call (inputs in the model's dtype)."""
        both = {k: torch.cat([negative_conditioning[k], conditioning[k]]) for k in conditioning}
        return self.predict(transformer, torch.cat([latents, latents]), _repeat(timesteps, 2), both).chunk(2)

    def _check_guidance_scale(self, guidance_scale: float):
        """Raise when the family cannot sample with `guidance_scale` (every scale is fine here)."""

    def step_distribution(self, model, latents, timesteps, conditioning, negative_conditioning=None,
                          guidance_scale: float = 1.0, eta: float | None = None, next_latents=None, generator=None,
                          branches: bool = False, autocast=None) -> StepDistribution:
        """The flow SDE step of `model` at `latents` with its log-probability (see the interface's
        [`~DDPOStableDiffusionPipeline.step_distribution`]); `eta` is the SDE noise level (default `noise_level`),
        classifier-free guidance is `uncond + scale * (cond - uncond)` on the velocity, as the stock pipeline."""
        velocity, uncond, cond = self._guided_velocity(model, latents, timesteps, conditioning, negative_conditioning,
                                                       guidance_scale, autocast)
        out = self.scheduler_step(velocity, timesteps, latents, eta=eta, prev_sample=next_latents, generator=generator)
        parts = None
        if branches and uncond is not None:
            parts = tuple(
                StepDistribution.from_scheduler_output(
                    self.scheduler_step(branch, timesteps, latents, eta=eta, prev_sample=out.latents))
                for branch in (uncond, cond)
            )
        return StepDistribution.from_scheduler_output(out, parts)

    def _guided_velocity(self, model, latents, timesteps, conditioning, negative_conditioning, guidance_scale,
                         autocast):
        """`(velocity, uncond, cond)`: the velocity at `latents`, with classifier-free guidance when given the negative
        conditioning and a scale > 1 (then also its two branches; otherwise those are None)."""
        self._check_guidance_scale(guidance_scale)
        cfg = negative_conditioning is not None and guidance_scale > 1.0
        with (autocast or contextlib.nullcontext)():
            if not cfg:
                return self.predict(model, latents, timesteps, conditioning), None, None
            uncond, cond = self.predict_branches(model, latents, timesteps, conditioning, negative_conditioning)
            return uncond + guidance_scale * (cond - uncond), uncond, cond

    def deterministic_step(self, model, latents, index, next_index, conditioning, negative_conditioning=None,
                           guidance_scale: float = 1.0, autocast=None) -> torch.Tensor:
        """The flow ODE's Euler step from the sigma of step `index` to that of step `next_index` (sigma 0 at the end;
        see the interface's [`~DDPOStableDiffusionPipeline.deterministic_step`])."""
        velocity, _, _ = self._guided_velocity(model, latents, self.scheduler.timesteps[index], conditioning,
                                               negative_conditioning, guidance_scale, autocast)
        return flow_ode_jump(self.scheduler, velocity, latents, index, next_index)

    def _call_prompts(self, prompt, num_images_per_prompt: int, ignored: dict) -> list[str]:
        """The prompts of a `__call__`, each repeated `num_images_per_prompt` times (`ignored` arguments logged)."""
        if ignored:
            logger.debug("ignoring unsupported pipeline arguments %s", sorted(ignored))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return [p for p in prompts for _ in range(num_images_per_prompt)]

    def _call_output(self, out: RolloutOutput, output_type: str) -> DDPOPipelineOutput:
        """TRL's output of a rollout, its images as `output_type` (`"pt"`, `"np"` or `"pil"`)."""
        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
        processor, images = self.sd_pipeline.image_processor, out.images
        if output_type != "pt":
            images = processor.pt_to_numpy(images)
        if output_type == "pil":
            images = processor.numpy_to_pil(images)
        steps = {"latents": list(out.latents.unbind(1)), "log_probs": list(out.log_probs.unbind(1))}
        return DDPOPipelineOutput(images=images, **steps)

    # ------------------------------------------------------------------ saving
    def save_lora(self, output_dir: str):
        """Write `pytorch_lora_weights.safetensors` with the adapter config (rank, alpha), so that the stock pipeline's
        `load_lora_weights(output_dir)` (`diffusers_pipeline_class_name`) reproduces the trained transformer."""
        _diffusers_class(self.diffusers_pipeline_class_name).save_lora_weights(
            save_directory=output_dir,
            transformer_lora_layers=_lora.peft_lora_state_dict(self.transformer),
            safe_serialization=True,
            transformer_lora_adapter_metadata=_lora.lora_adapter_metadata(self.transformer),
        )

    def _fused_pipeline(self):
        """The stock pipeline of a fused save: the transformer with its adapters merged (in the base's dtype) and the
        frozen components as the base had them (absent ones `None`)."""
        names = [n for te in self.text_encoder_names for n in (te, te.replace("text_encoder", "tokenizer"))]
        names = ["scheduler", "vae", *names, "image_encoder", "feature_extractor"]
        components = {name: getattr(self.sd_pipeline, name, None) for name in names}
        clean = _lora.fuse_lora_model(self.transformer, dtype=self._original_dtypes.get("transformer"))
        return _diffusers_class(self.diffusers_pipeline_class_name)(transformer=clean, **components)

    def save_pretrained(self, output_dir: str, fuse_lora: bool = False):
        """Save in diffusers format: the full pipeline (full fine-tune, or LoRA with `fuse_lora=True`, the adapters
        merged), which the stock pipeline class's `from_pretrained(output_dir)` loads, with the frozen components as
        the base had them; or the LoRA weights alone. Safetensors only."""
        os.makedirs(output_dir, exist_ok=True)
        if self.use_lora and not fuse_lora:
            return self.save_lora(output_dir)
        with self._base_dtypes():
            pipeline = self._fused_pipeline() if self.use_lora else self.sd_pipeline
            pipeline.save_pretrained(output_dir, safe_serialization=True)

    def _single_model(self, models):
        if len(models) != 1:
            raise ValueError(f"expected one prepared model (the transformer), got {len(models)}")

    def save_checkpoint(self, models, weights, output_dir):
        """accelerate `save_state` pre-hook: the transformer (or its LoRA weights) in diffusers format."""
        self._single_model(models)
        if self.use_lora:
            self.save_lora(output_dir)
        else:
            models[0].save_pretrained(os.path.join(output_dir, "transformer"), safe_serialization=True)
        del weights[-1:]  # we saved the model ourselves; accelerate must not save it again

    def load_checkpoint(self, models, input_dir):
        """accelerate `load_state` pre-hook: the inverse of `save_checkpoint`."""
        self._single_model(models)
        model = models.pop()
        if self.use_lora:
            self.load_lora_into_transformer(input_dir, transformer=model)
            return
        loaded = _diffusers_class(self.transformer_class_name).from_pretrained(os.path.join(input_dir, "transformer"))
        model.register_to_config(**loaded.config)
        model.load_state_dict(loaded.state_dict())

    def init_lora_weights(self, seed: int):
        """Draw the LoRA adapters' initial weights from `seed` alone (see `lora.init_lora_weights_from_seed`)."""
        _lora.init_lora_weights_from_seed(self.transformer, seed)
        self.lora_weights_untrained = False

    def load_lora_into_transformer(self, input_dir: str, transformer=None):
        """Load `pytorch_lora_weights.safetensors` from `input_dir` into the existing adapter of the transformer."""
        self.lora_weights_untrained = False
        state = _diffusers_class(self.diffusers_pipeline_class_name).lora_state_dict(input_dir)
        prefix = "transformer."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        _lora.load_lora_state(transformer if transformer is not None else self.transformer, state, input_dir)
