"""`DDPOTrainer`: TRL v0.23.1's DDPO trainer semantics (arXiv 2305.13301), kept and fixed.

One epoch: sample trajectories with DDIM-with-log-prob -> rewards -> advantages -> clipped PPO updates over the
sampled timesteps. `SafeDDPOGRPOTrainer` builds on the same machinery with group-relative advantages.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed

from .ddpo_config import DDPOConfig
from .pipelines.stable_diffusion import DDPOStableDiffusionPipeline

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint_"


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned something unusable; the message names the epoch and batch."""


class _NullTracker:
    """Handed to `image_samples_hook` when no tracker is configured, so TRL-style hooks run unchanged."""

    name = "none"

    def log(self, values, step=None, **kwargs):
        logger.debug("no tracker configured; dropping %d values at step %s", len(values), step)

    def log_images(self, values, step=None, **kwargs):
        logger.debug("no tracker configured; dropping %d images at step %s", len(values), step)


class PerPromptStatTracker:
    """Running reward statistics per prompt (DDPO's per-prompt normalisation).

    Args:
        buffer_size (`int`): rewards kept per prompt.
        min_count (`int`): below this many rewards, the whole batch's mean and std are used instead.
    """

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts, rewards: np.ndarray) -> np.ndarray:
        prompts = np.asarray(prompts)
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.zeros_like(rewards)
        finite = np.isfinite(rewards)
        for prompt in np.unique(prompts):
            mask = (prompts == prompt) & finite
            buffer = self.stats.setdefault(str(prompt), deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            if len(buffer) < self.min_count:
                mean, std = rewards[finite].mean(), rewards[finite].std() + 1e-6
            else:
                mean, std = np.mean(buffer), np.std(buffer) + 1e-6
            advantages[mask] = (rewards[mask] - mean) / std
        return advantages

    def get_stats(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "count": len(v)} for k, v in self.stats.items()}


@dataclass
class _SamplePlan:
    """What one process samples in one epoch: a prompt, its metadata and a noise seed per sample."""

    prompts: list[str]
    metadata: list[Any]
    noise_seeds: list[int]  # initial-noise seed of each sample (equal within a GRPO group when noise is shared)
    step_seeds: list[int]  # per-sample seed of the DDIM step noise


def _mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64), independent of Python's hash randomisation."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x = z ^ (z >> 31)
    return x & 0x7FFFFFFFFFFFFFFF


def clipped_surrogate_loss(advantages: torch.Tensor, clip_range: float, ratio: torch.Tensor) -> torch.Tensor:
    """PPO's clipped objective as a loss: mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.mean(torch.maximum(unclipped, clipped))


class DDPOTrainer:
    r"""
    Denoising Diffusion Policy Optimization with TRL v0.23.1's interface.

    Args:
        config (`DDPOConfig`): training configuration.
        reward_function (`Callable`): `reward_function(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`
            with `images` float (B, 3, H, W) in [0, 1] on the trainer's device and `rewards` anything
            `torch.as_tensor` takes, shape (B,).
        prompt_function (`Callable`): `prompt_function() -> (prompt, prompt_metadata)`, called once per sample.
        sd_pipeline (`DDPOStableDiffusionPipeline`): the pipeline to train, e.g. `DefaultDDPOStableDiffusionPipeline`.
        image_samples_hook (`Callable`, *optional*): `hook(prompt_image_data, global_step, tracker)` called every
            epoch; `prompt_image_data` is a list of `[images, prompts, prompt_metadata, rewards, reward_metadata]`.
    """

    _tag_names = ["trl", "ddpo", "trl-safediffusion"]
    _method_name = "DDPO"  # how cards and sample datasets name the training method
    structure_fn: Callable | None = None  # the structure anchor's feature map (SafeDDPOGRPOTrainer)

    def __init__(
        self,
        config: DDPOConfig,
        reward_function: Callable,
        prompt_function: Callable,
        sd_pipeline: DDPOStableDiffusionPipeline,
        image_samples_hook: Callable | None = None,
    ):
        if not callable(prompt_function):
            raise ValueError("prompt_function must be a callable returning (prompt, prompt_metadata)")
        self.prompt_fn = prompt_function
        self._setup(config, reward_function, sd_pipeline, image_samples_hook)

    # ================================================================== set-up
    def _setup(self, config, reward_function, sd_pipeline, image_samples_hook):
        if not isinstance(config, DDPOConfig):
            raise ValueError(f"config must be a DDPOConfig, got {type(config).__name__}")
        if not callable(reward_function):
            raise ValueError("reward_function must be callable: (images, prompts, prompt_metadata) -> (rewards, meta)")
        if not isinstance(sd_pipeline, DDPOStableDiffusionPipeline):
            raise ValueError(
                "sd_pipeline must be a DDPOStableDiffusionPipeline (e.g. DefaultDDPOStableDiffusionPipeline), got "
                f"{type(sd_pipeline).__name__}"
            )
        if image_samples_hook is not None and not callable(image_samples_hook):
            raise ValueError("image_samples_hook must be callable (prompt_image_data, global_step, tracker) or None")
        self.config = config
        self.reward_fn = reward_function
        self.sd_pipeline = sd_pipeline
        if image_samples_hook is None and config.log_with is not None:
            from .hooks import image_grid_hook

            image_samples_hook = image_grid_hook()  # a captioned grid of samples with their rewards
        self.image_samples_callback = image_samples_hook
        self.log_history: list[dict] = []

        self._log_prob_steps = self._steps_with_log_prob()
        self.num_train_timesteps = self._num_train_timesteps()
        project_kwargs = dict(config.project_kwargs)
        project_dir = project_kwargs.pop("project_dir", None) or os.path.join(
            config.logdir, config.run_name or config.exp_name
        )
        project_kwargs.pop("automatic_checkpoint_naming", None)  # we name checkpoints by epoch ourselves
        project_kwargs.pop("total_limit", None)
        self.project_dir = os.path.abspath(project_dir)
        self.checkpoint_dir = os.path.join(self.project_dir, "checkpoints")

        accelerator_kwargs = dict(config.accelerator_kwargs)
        if "cpu" not in accelerator_kwargs and _cpu_only_multiprocess():
            # accelerate runs torchrun-launched CPU ranks as independent single processes unless told cpu=True
            accelerator_kwargs["cpu"] = True
        self.accelerator = Accelerator(
            log_with=config.log_with,
            mixed_precision=config.mixed_precision,
            project_config=ProjectConfiguration(project_dir=self.project_dir, **project_kwargs),
            **accelerator_kwargs,
        )
        self._check_output_dir_writable()
        if self.accelerator.is_main_process and config.log_with is not None:
            self.accelerator.init_trackers(
                config.tracker_project_name, config=self._tracker_config(), init_kwargs=config.tracker_kwargs
            )
        logger.info("config: %s", config.to_dict())
        set_seed(config.seed, device_specific=True)
        if sd_pipeline.lora_weights_untrained:
            # fresh adapters were drawn from the caller's global RNG when the pipeline was built: `seed` alone decides
            sd_pipeline.init_lora_weights(config.seed)

        if self.accelerator.mixed_precision == "fp16":
            self.inference_dtype = torch.float16
        elif self.accelerator.mixed_precision == "bf16":
            self.inference_dtype = torch.bfloat16
        else:
            self.inference_dtype = torch.float32
        device = self.accelerator.device
        pipe = self.sd_pipeline
        # Frozen weights in the inference dtype, trainable ones in fp32 (full fine-tuning keeps fp32 master weights
        # and relies on autocast; casting them to fp16 is what made TRL v0.23.1 fail with "Attempting to unscale FP16
        # gradients"). The pipeline remembers the base's dtypes and weights, so that saved folders hold them.
        pipe.cast_for_training(device, self.inference_dtype)
        pipe.set_progress_bar_config(disable=True)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True

        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        trainable = [p for p in pipe.unet.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the pipeline's UNet has no trainable parameters: use_lora=False or add LoRA adapters")
        self.ref_unet = None
        if (getattr(config, "beta", 0.0) > 0 or getattr(config, "structure_weight", 0.0) > 0) and not pipe.use_lora:
            self.ref_unet = copy.deepcopy(pipe.unet).requires_grad_(False).to(device, dtype=self.inference_dtype)
            self.ref_unet.eval()
        self.optimizer = self._setup_optimizer(trainable)
        self.accelerator.register_save_state_pre_hook(self._save_model_hook)
        self.accelerator.register_load_state_pre_hook(self._load_model_hook)
        self.unet, self.optimizer = self.accelerator.prepare(pipe.unet, self.optimizer)
        self.trainable_layers = self.unet
        self._trainable_params = [p for p in self.unet.parameters() if p.requires_grad]

        neg = [config.negative_prompts or ""]
        self.neg_prompt_embed = pipe.encode_prompts(neg).to(device)  # (1, L, D)
        self.stat_tracker = (
            PerPromptStatTracker(config.per_prompt_stat_tracking_buffer_size, config.per_prompt_stat_tracking_min_count)
            if config.per_prompt_stat_tracking
            else None
        )
        self.executor = futures.ThreadPoolExecutor(max_workers=config.max_workers) if config.async_reward_computation else None
        self.first_epoch, self.global_step = 0, 0
        self._hub_pusher = None
        if config.resume_from:
            self._resume(config.resume_from)

    def _num_train_timesteps(self) -> int:
        return max(1, int(self._timestep_candidates() * self.config.train_timestep_fraction))

    def _trainable_timestep_count(self) -> int:
        """How many of the T steps of a trajectory are candidates for training (for DDPO all of them that have a
        log-probability)."""
        return self._log_prob_steps

    def _steps_with_log_prob(self) -> int:
        """How many steps, from the first, are stochastic. Only the last may have zero variance (a DDIM scheduler
        with `set_alpha_to_one=True`, or a last timestep of 0): it is sampled, never trained on (its log-probability
        does not exist)."""
        c = self.config
        std = self.sd_pipeline.step_std(c.sample_num_steps, c.sample_eta)  # (T,)
        zero = [int(i) for i in torch.nonzero(std == 0).reshape(-1)]
        if not zero:
            return c.sample_num_steps
        if zero != [c.sample_num_steps - 1] or c.sample_num_steps == 1:
            raise ValueError(
                f"steps {zero} of the {c.sample_num_steps}-step schedule have zero variance and no log-probability; "
                "raise sample_num_steps, or set the scheduler's set_alpha_to_one=False and steps_offset=1"
            )
        logger.info("the last of the %d sampling steps has zero variance (scheduler set_alpha_to_one=True or a last "
                    "timestep of 0): it is sampled but never trained on", c.sample_num_steps)
        return c.sample_num_steps - 1

    def _tracker_config(self) -> dict:
        out = {}
        for k, v in self.config.to_dict().items():
            out[k] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
        return out

    def _check_output_dir_writable(self):
        """Every folder the run writes is checked before the first epoch, so that no run ends with nowhere to save."""
        if not self.accelerator.is_main_process:
            return
        try:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            probe = os.path.join(self.project_dir, ".write_test")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as err:
            raise ValueError(
                f"cannot write to the output folder {self.project_dir} ({err.strerror}); set config.logdir or "
                "project_kwargs['project_dir'] to a writable folder"
            ) from err
        if self.config.output_dir:
            check_writable_folder(self.config.output_dir, "output_dir")
        if self.config.project_kwargs.get("logging_dir"):
            check_writable_folder(self.config.project_kwargs["logging_dir"], "project_kwargs['logging_dir']")

    def _setup_optimizer(self, params):
        c = self.config
        if c.train_use_8bit_adam:
            import bitsandbytes

            optimizer_cls = bitsandbytes.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        return optimizer_cls(
            params,
            lr=c.train_learning_rate,
            betas=(c.train_adam_beta1, c.train_adam_beta2),
            weight_decay=c.train_adam_weight_decay,
            eps=c.train_adam_epsilon,
        )

    def _save_model_hook(self, models, weights, output_dir):
        unwrapped = [self.accelerator.unwrap_model(m) for m in models]
        if self.accelerator.is_main_process:
            self.sd_pipeline.save_checkpoint(unwrapped, weights, output_dir)
        else:
            weights.clear()

    def _load_model_hook(self, models, input_dir):
        unwrapped = [self.accelerator.unwrap_model(m) for m in models]
        self.sd_pipeline.load_checkpoint(unwrapped, input_dir)
        models.clear()

    # ================================================================== sampling
    def _sample_plan(self, epoch: int, num_samples: int | None = None) -> _SamplePlan:
        """DDPO: one `prompt_function()` call and independent noise per sample (`num_samples` defaults to the
        epoch's `sample_batch_size * sample_num_batches_per_epoch`)."""
        n = num_samples or self.config.sample_batch_size * self.config.sample_num_batches_per_epoch
        prompts, metadata = [], []
        for _ in range(n):
            prompt, meta = self.prompt_fn()
            if not isinstance(prompt, str):
                raise ValueError(f"prompt_function must return (str, metadata), got a {type(prompt).__name__} prompt")
            prompts.append(prompt)
            metadata.append(meta)
        rank = self.accelerator.process_index
        seeds = [_mix_seed(self.config.seed, 1, epoch, rank, i) for i in range(n)]
        return _SamplePlan(prompts, metadata, seeds, [_mix_seed(s, 2) for s in seeds])

    def _rollout_epoch(self, epoch: int):
        """Roll out this process's samples for `epoch`; rewards are started (async) or computed per batch.

        Returns `(samples, prompt_image_data, reward_jobs, plan)`: one dict of tensors per sampling batch, one
        `[images, prompts, metadata]` per batch, the reward futures (async rewards only) and the epoch's plan.
        """
        plan = self._sample_plan(epoch)
        samples, prompt_image_data, reward_jobs = self._rollout_plan(plan, self.config.sample_batch_size, epoch)
        return samples, prompt_image_data, reward_jobs, plan

    def _generate_samples(self, iterations: int, batch_size: int):
        """TRL v0.23.1's sampling entry point: `iterations` batches of `batch_size` samples from `prompt_function`.

        Returns:
            `(samples, prompt_image_pairs)` as in TRL: one dict of tensors per batch and one `[images, prompts,
            prompt_metadata]` per batch.
        """
        if self.prompt_fn is None:
            raise ValueError("_generate_samples(iterations, batch_size) draws from prompt_function; this trainer has a "
                             "train_dataset instead: use _rollout_epoch(epoch)")
        n = iterations * batch_size
        plan = DDPOTrainer._sample_plan(self, 0, num_samples=n)
        samples, prompt_image_data, _ = self._rollout_plan(plan, batch_size, 0, async_rewards=False)
        return samples, prompt_image_data

    def _rollout_plan(self, plan: _SamplePlan, batch_size: int, epoch: int, async_rewards: bool = True):
        """Sample `plan` in batches of `batch_size` (see `_rollout_epoch`)."""
        bs = batch_size
        device = self.accelerator.device
        samples, prompt_image_data, reward_jobs = [], [], []
        self.unet.eval()
        n_batches = len(plan.prompts) // bs
        from tqdm.auto import tqdm

        for b in tqdm(range(n_batches), desc=f"Epoch {epoch}: sampling", leave=False,
                      disable=not self.accelerator.is_local_main_process or n_batches < 2):
            sl = slice(b * bs, (b + 1) * bs)
            prompts, metadata = plan.prompts[sl], plan.metadata[sl]
            prompt_embeds = self.sd_pipeline.encode_prompts(prompts).to(device)
            neg = self.neg_prompt_embed.expand(len(prompts), -1, -1)
            shape = self.sd_pipeline.latent_shape()
            initial = torch.stack(
                [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in plan.noise_seeds[sl]]
            )
            generators = [torch.Generator(device=device).manual_seed(s) for s in plan.step_seeds[sl]]
            out = self.sd_pipeline.rollout(
                prompt_embeds,
                neg,
                num_inference_steps=self.config.sample_num_steps,
                guidance_scale=self.config.sample_guidance_scale,
                eta=self.config.sample_eta,
                initial_latents=initial,
                generators=generators,
                autocast=self.accelerator.autocast,
            )
            samples.append(
                {
                    "prompt_embeds": prompt_embeds,
                    "timesteps": out.timesteps.repeat(len(prompts), 1),  # (B, T)
                    "latents": out.latents[:, :-1],  # (B, T, C, h, w)
                    "next_latents": out.latents[:, 1:],  # (B, T, C, h, w)
                    "log_probs": out.log_probs,  # (B, T)
                }
            )
            prompt_image_data.append([out.images, list(prompts), tuple(metadata)])
            if self.executor is not None and async_rewards:
                reward_jobs.append(self.executor.submit(self.reward_fn, out.images, list(prompts), tuple(metadata)))
        return samples, prompt_image_data, reward_jobs

    def _check_reward(self, result, batch_size: int, epoch: int, batch: int):
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise ValueError(
                f"reward_function must return (rewards, reward_metadata); got {type(result).__name__} at epoch "
                f"{epoch}, batch {batch}"
            )
        rewards, meta = result
        try:
            rewards = torch.as_tensor(rewards)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"reward_function returned rewards of type {type(rewards).__name__} that torch.as_tensor cannot take "
                f"(epoch {epoch}, batch {batch})"
            ) from err
        if not (rewards.is_floating_point() or rewards.dtype in (torch.int32, torch.int64, torch.bool)):
            raise ValueError(f"reward_function returned rewards of dtype {rewards.dtype}; expected real numbers")
        rewards = rewards.reshape(-1) if rewards.ndim == 2 and rewards.shape[-1] == 1 else rewards
        if rewards.ndim != 1 or rewards.shape[0] != batch_size:
            raise ValueError(
                f"reward_function returned rewards of shape {tuple(rewards.shape)} for {batch_size} images; expected "
                f"({batch_size},) (epoch {epoch}, batch {batch})"
            )
        # bf16/fp16 rewards are upcast: TRL v0.23.1 failed to log them (numpy has no bf16).
        return rewards.to(device=self.accelerator.device, dtype=torch.float32), meta

    def compute_rewards(self, prompt_image_data, reward_jobs=None, epoch: int = -1):
        """Rewards of each sampled batch: a list of (rewards (B,) float32, reward_metadata)."""
        results = []
        for b, (images, prompts, metadata) in enumerate(prompt_image_data):
            try:
                if reward_jobs:
                    # The futures hold (rewards, metadata) tuples; TRL v0.23.1 called .result() on the tensors.
                    result = reward_jobs[b].result()
                else:
                    result = self.reward_fn(images, prompts, metadata)
            except Exception as err:  # noqa: BLE001 - re-raised with the epoch and batch that failed
                raise RewardFunctionError(
                    f"reward_function raised at epoch {epoch}, batch {b}: {type(err).__name__}: {err}"
                ) from err
            results.append(self._check_reward(result, len(prompts), epoch, b))
        return results

    # ================================================================== advantages
    def _compute_advantages(self, rewards: np.ndarray, prompts: list[str], plan_global=None) -> np.ndarray:
        """DDPO: per-prompt or batch normalisation. Non-finite rewards get advantage 0 and are left out of statistics."""
        finite = np.isfinite(rewards)
        if self.stat_tracker is not None:
            return self.stat_tracker.update(prompts, rewards)
        adv = np.zeros_like(rewards, dtype=np.float64)
        if finite.any():
            r = rewards[finite]
            adv[finite] = (r - r.mean()) / (r.std() + 1e-8)
        return adv

    # ================================================================== loss
    def loss(self, advantages: torch.Tensor, clip_range: float, ratio: torch.Tensor) -> torch.Tensor:
        return clipped_surrogate_loss(advantages, clip_range, ratio)

    def _reference_unet(self):
        """The reference policy's UNet and the context that makes it so (LoRA disabled, or the frozen copy)."""
        if self.ref_unet is not None:
            return self.ref_unet, contextlib.nullcontext()
        unet = self.accelerator.unwrap_model(self.unet)
        return unet, _adapters_disabled(unet)

    def _reference_mean(self, latents, timesteps, embeds):
        """Mean of the reference policy's step (no grad): LoRA disabled, or the frozen copy of the UNet."""
        with torch.no_grad():
            unet, ctx = self._reference_unet()
            with ctx, self.accelerator.autocast():
                pred = self._unet_prediction(unet, latents, timesteps, embeds)
            return self.sd_pipeline.scheduler_step(pred, timesteps, latents, eta=self.config.sample_eta, prev_sample=latents)

    def _unet_branches(self, unet, latents, timesteps, embeds):
        """`(uncond, cond)` noise predictions for CFG training embeds `[negative; prompt]`."""
        neg, pos = embeds.chunk(2)
        return self.sd_pipeline.predict_branches(unet, latents, timesteps, pos, neg)

    def _step_kl(self, policy_pred, ref_pred, timesteps, latents):
        """Per-sample KL between the DDIM steps the two predictions give (same std: squared mean gap / 2 var)."""
        eta = self.config.sample_eta
        a = self.sd_pipeline.scheduler_step(policy_pred, timesteps, latents, eta=eta, prev_sample=latents)
        b = self.sd_pipeline.scheduler_step(ref_pred, timesteps, latents, eta=eta, prev_sample=latents)
        return _same_std_kl(a.prev_sample_mean, b.prev_sample_mean, a.std_dev_t)

    @property
    def _train_with_cfg(self) -> bool:
        # guidance 1 samples without CFG (uncond + 1 * (cond - uncond) is cond), so training skips the wasted half too
        return bool(self.config.train_cfg) and self.config.sample_guidance_scale > 1.0

    def _training_embeds(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """(N, L, D) prompt embeddings -> what `_unet_prediction` takes: `[negative; prompt]` (2N) under CFG."""
        if self._train_with_cfg:
            return torch.cat([self.neg_prompt_embed.expand_as(prompt_embeds), prompt_embeds])
        return prompt_embeds

    def _unet_prediction(self, unet, latents, timesteps, embeds):
        if self._train_with_cfg:
            neg, pos = embeds.chunk(2)
            return self.sd_pipeline.predict(unet, latents, timesteps, pos, neg, self.config.sample_guidance_scale)
        return unet(latents, timesteps, embeds).sample

    def calculate_loss(self, latents, timesteps, next_latents, log_probs, advantages, embeds):
        """TRL v0.23.1's `calculate_loss`: the clipped PPO loss of a flat batch of steps.

        Returns:
            `(loss, approx_kl, clipfrac)` as in TRL. `loss` includes every configured extra term (the KL to the
            reference, the structure anchor); [`~DDPOTrainer.compute_loss_terms`] returns each term by name.
        """
        terms = self.compute_loss_terms(latents, timesteps, next_latents, log_probs, advantages, embeds)
        return terms["loss"], terms["approx_kl"], terms["clipfrac"]

    def compute_loss_terms(
        self, latents, timesteps, next_latents, log_probs, advantages, embeds, kl_weights=None, structure_weights=None
    ) -> dict[str, torch.Tensor]:
        """Clipped PPO loss for a flat batch of steps, plus the KL and the structure anchor where configured.

        Args:
            latents, next_latents (`torch.Tensor`): (N, C, h, w) x_t and the stored x_{t-1}.
            timesteps (`torch.Tensor`): (N,).
            log_probs (`torch.Tensor`): (N,) log-probabilities recorded at sampling time.
            advantages (`torch.Tensor`): (N,).
            embeds (`torch.Tensor`): (2N, L, D) `[negative; prompt]` with `train_cfg`, else (N, L, D).
            kl_weights (`torch.Tensor`, *optional*): (N,) weight of each step's KL term (`kl_unsafe_weight` on
                unsafe-labelled samples, 1 elsewhere); all ones when omitted.
            structure_weights (`torch.Tensor`, *optional*): (N,) weight of each step's structure anchor
                (`structure_weight` on unsafe-labelled samples, 0 elsewhere); omitted, there is no anchor.

        Returns:
            `dict` with `loss`, `approx_kl`, `clipfrac` (as `calculate_loss`), `kl` (the weighted mean KL to the
            reference policy, 0 when beta = 0) and `structure` (the weighted mean structure anchor, 0 without
            `structure_weights`); `loss` includes `beta * kl + structure`. Each is a 0-dim tensor.
        """
        c = self.config
        beta = getattr(c, "beta", 0.0)
        branches = beta > 0 and getattr(c, "kl_mode", "guided") == "branches" and self._train_with_cfg
        with self.accelerator.autocast():
            if branches:
                uncond, cond = self._unet_branches(self.unet, latents, timesteps, embeds)
                pred = uncond + c.sample_guidance_scale * (cond - uncond)
            else:
                pred = self._unet_prediction(self.unet, latents, timesteps, embeds)
        out = self.sd_pipeline.scheduler_step(pred, timesteps, latents, eta=c.sample_eta, prev_sample=next_latents)
        log_prob = out.log_probs
        advantages = torch.clamp(advantages, -c.train_adv_clip_max, c.train_adv_clip_max)
        ratio = torch.exp(log_prob - log_probs)
        loss = self.loss(advantages, c.train_clip_range, ratio)
        approx_kl = 0.5 * torch.mean((log_prob - log_probs) ** 2)
        clipfrac = torch.mean((torch.abs(ratio - 1.0) > c.train_clip_range).float())
        kl = torch.zeros((), device=loss.device)
        structure = torch.zeros((), device=loss.device)
        ref = None  # the reference policy's guided step, computed once for whichever term needs it
        if beta > 0:
            w = torch.ones_like(advantages) if kl_weights is None else kl_weights.to(advantages)
            if branches:
                with torch.no_grad():
                    unet, ctx = self._reference_unet()
                    with ctx, self.accelerator.autocast():
                        ref_uncond, ref_cond = self._unet_branches(unet, latents, timesteps, embeds)
                    if structure_weights is not None:
                        ref_pred = ref_uncond.float() + c.sample_guidance_scale * (ref_cond.float() - ref_uncond.float())
                        ref = self.sd_pipeline.scheduler_step(ref_pred, timesteps, latents, eta=c.sample_eta,
                                                              prev_sample=latents)
                # the unconditional prediction sees no prompt: anchored for every sample
                per = w * self._step_kl(cond, ref_cond, timesteps, latents)
                per = per + self._step_kl(uncond, ref_uncond, timesteps, latents)
            else:
                ref = self._reference_mean(latents, timesteps, embeds)
                per = w * _same_std_kl(out.prev_sample_mean, ref.prev_sample_mean, out.std_dev_t)
            kl = per.mean()
            loss = loss + beta * kl
        if structure_weights is not None:
            ws = structure_weights.to(advantages)
            rows = ws > 0
            if bool(rows.any()):
                if ref is None:
                    ref = self._reference_mean(latents, timesteps, embeds)
                structure_fn = self.structure_fn
                with torch.no_grad():
                    target = structure_fn(ref.pred_original_sample[rows]).float()
                features = structure_fn(out.pred_original_sample[rows]).float()
                if features.shape != target.shape or features.shape[0] != int(rows.sum()):
                    raise ValueError(
                        f"structure_fn must map (n, C, h, w) latents to features with n rows, got {tuple(features.shape)}"
                        f" for {int(rows.sum())} latents"
                    )
                gap = ((features - target) ** 2).reshape(features.shape[0], -1).mean(dim=1)
                # a mean over all N samples, as the KL: the anchor's size does not depend on how many are unsafe
                structure = (ws[rows] * gap).sum() / ws.numel()
                loss = loss + structure
        return {"loss": loss, "approx_kl": approx_kl, "clipfrac": clipfrac, "kl": kl, "structure": structure}

    # ================================================================== training
    def _timestep_candidates(self) -> int:
        """How many steps, from the first, training picks from: `train_timestep_window` of the trainable ones."""
        return max(1, math.ceil(self._trainable_timestep_count() * self.config.train_timestep_window - 1e-9))

    def _train_on_samples(self, samples: dict, epoch: int, global_step: int) -> int:
        c = self.config
        device = self.accelerator.device
        n_local, T = samples["timesteps"].shape
        k_train = self.num_train_timesteps
        candidates = self._timestep_candidates()
        chunk = c.train_timesteps_per_forward
        accum = c.train_gradient_accumulation_steps
        for inner_epoch in range(c.train_num_inner_epochs):
            g = torch.Generator().manual_seed(_mix_seed(c.seed, 3, epoch, inner_epoch, self.accelerator.process_index))
            perm = torch.randperm(n_local, generator=g)
            # each sample trains on its own random subset of timesteps (DDPO's per-sample time shuffle)
            time_idx = torch.argsort(torch.rand(n_local, candidates, generator=g), dim=1)[:, :k_train]  # (N, k)
            perm_d, time_idx = perm.to(device), time_idx.to(device)
            self.unet.train()
            n_mb = n_local // c.train_batch_size
            info = defaultdict(list)
            from tqdm.auto import tqdm

            for mb in tqdm(range(n_mb), desc=f"Epoch {epoch}: training", leave=False,
                           disable=not self.accelerator.is_local_main_process or n_mb < 2):
                idx = perm_d[mb * c.train_batch_size : (mb + 1) * c.train_batch_size]
                t_idx = time_idx[idx]  # (b, k)
                rows = idx[:, None].expand_as(t_idx)
                last_in_step = (mb + 1) % accum == 0 or mb == n_mb - 1
                chunks = [(j, min(j + chunk, k_train)) for j in range(0, k_train, chunk)]
                for ci, (j0, j1) in enumerate(chunks):
                    sel_rows, sel_t = rows[:, j0:j1].reshape(-1), t_idx[:, j0:j1].reshape(-1)
                    latents = samples["latents"][sel_rows, sel_t]
                    next_latents = samples["next_latents"][sel_rows, sel_t]
                    timesteps = samples["timesteps"][sel_rows, sel_t]
                    log_probs = samples["log_probs"][sel_rows, sel_t]
                    advantages = samples["advantages"][sel_rows]
                    embeds = self._training_embeds(samples["prompt_embeds"][sel_rows])
                    kl_weights = samples["kl_weights"][sel_rows] if "kl_weights" in samples else None
                    s_weights = samples["structure_weights"][sel_rows] if "structure_weights" in samples else None
                    sync = last_in_step and ci == len(chunks) - 1
                    ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.unet)
                    with ctx:
                        terms = self.compute_loss_terms(
                            latents, timesteps, next_latents, log_probs, advantages, embeds, kl_weights, s_weights
                        )
                        # mean over the k sampled timesteps and the accumulated minibatches, as TRL's accumulation
                        weight = (j1 - j0) / k_train / accum
                        self.accelerator.backward(terms["loss"] * weight)
                    if s_weights is None:
                        terms.pop("structure")
                    for name, value in terms.items():
                        info[name].append(value.detach().float() * (j1 - j0) / k_train)
                if last_in_step:
                    self.accelerator.clip_grad_norm_(self._trainable_params, c.train_max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    steps_in = len(info["loss"]) / len(chunks)
                    stats = {k: torch.stack(v).sum() / steps_in for k, v in info.items()}
                    stats = self.accelerator.reduce(stats, reduction="mean")
                    logged = {f"train/{k}": float(v) for k, v in stats.items()}
                    logged.update({"epoch": epoch, "inner_epoch": inner_epoch})
                    self._log(logged, step=global_step)
                    global_step += 1
                    info = defaultdict(list)
        return global_step

    # ================================================================== epoch
    def step(self, epoch: int, global_step: int) -> int:
        """Sample, reward, compute advantages and train for one epoch. Returns the updated global step."""
        samples, prompt_image_data, reward_jobs, plan = self._rollout_epoch(epoch)
        reward_results = self.compute_rewards(prompt_image_data, reward_jobs, epoch=epoch)
        for data, (rewards, meta) in zip(prompt_image_data, reward_results):
            data.extend([rewards, meta])
        if self.image_samples_callback is not None:
            tracker = self.accelerator.trackers[0] if self.accelerator.trackers else _NullTracker()
            self.image_samples_callback(prompt_image_data, global_step, tracker)

        samples = {k: torch.cat([s[k] for s in samples]) for k in samples[0]}
        local_rewards = torch.cat([r for r, _ in reward_results])
        rewards = self.accelerator.gather(local_rewards).cpu().double().numpy()
        if not np.isfinite(rewards).any() and self.accelerator.is_main_process:
            logger.warning(
                "epoch %d: all %d rewards are NaN or infinite, so every advantage is 0 and this epoch trains nothing; "
                "check the reward function", epoch, rewards.size,
            )
        prompts = gather_object(list(plan.prompts)) if self.accelerator.num_processes > 1 else list(plan.prompts)
        metadata = gather_object(list(plan.metadata)) if self.accelerator.num_processes > 1 else list(plan.metadata)
        advantages = self._compute_advantages(rewards, prompts, metadata)
        self._log_rewards(epoch, global_step, rewards, prompts, metadata, reward_results, advantages)

        n_local = local_rewards.shape[0]
        start = self.accelerator.process_index * n_local
        samples["advantages"] = torch.as_tensor(
            advantages[start : start + n_local], dtype=torch.float32, device=self.accelerator.device
        )
        kl_weights = self._kl_weights(plan.metadata)
        if kl_weights is not None:
            samples["kl_weights"] = kl_weights
        structure_weights = self._structure_weights(plan.metadata)
        if structure_weights is not None:
            samples["structure_weights"] = structure_weights
        if self.config.push_samples_every and epoch % self.config.push_samples_every == 0:
            self._push_samples(epoch, prompt_image_data, plan)
        global_step = self._train_on_samples(samples, epoch, global_step)
        if self.config.save_freq and (epoch + 1) % self.config.save_freq == 0:
            self.save_checkpoint(epoch, global_step)
        return global_step

    def _kl_weights(self, metadata) -> torch.Tensor | None:
        """(N,) KL weight per local sample: `kl_unsafe_weight` where the label column is true, else 1 (None: all 1)."""
        c = self.config
        weight = float(getattr(c, "kl_unsafe_weight", 1.0))
        if getattr(c, "beta", 0.0) <= 0 or weight == 1.0:
            return None
        return self._label_weights(metadata, weight, 1.0, f"kl_unsafe_weight={weight}", "kl_unsafe_weight=1")

    def _structure_weights(self, metadata) -> torch.Tensor | None:
        """(N,) structure-anchor weight per local sample: `structure_weight` where the label column is true, else 0
        (None: no anchor)."""
        weight = float(getattr(self.config, "structure_weight", 0.0))
        if weight <= 0:
            return None
        return self._label_weights(metadata, weight, 0.0, f"structure_weight={weight}", "structure_weight=0")

    def _label_weights(self, metadata, unsafe_value, safe_value, option, off) -> torch.Tensor:
        label = getattr(self.config, "label_column", None)
        if not label or not all(isinstance(m, dict) and label in m for m in metadata):
            raise ValueError(
                f"{option} needs every prompt's metadata to carry label_column {label!r} (mix_prompts adds it); set "
                f"label_column to your dataset's unsafe column or {off}"
            )
        values = [unsafe_value if _truthy(m[label]) else safe_value for m in metadata]
        return torch.tensor(values, dtype=torch.float32, device=self.accelerator.device)

    def _reward_log(self, epoch: int, rewards: np.ndarray, reward_results) -> tuple[dict, dict]:
        """The reward statistics every trainer logs, and the gathered per-component rewards."""
        finite = np.isfinite(rewards)
        r = rewards[finite]
        log = {
            "epoch": epoch,
            "reward_mean": float(r.mean()) if r.size else float("nan"),
            "reward_std": float(r.std()) if r.size else float("nan"),
            "reward_nonfinite": int((~finite).sum()),
            "sample_guidance_scale": float(self.config.sample_guidance_scale),
        }
        components = self._gather_components(reward_results)
        for name, values in components.items():
            fin = values[np.isfinite(values)]
            log[f"reward/{name}_mean"] = float(fin.mean()) if fin.size else float("nan")
        self._last_components = components
        return log, components

    def _log_rewards(self, epoch, global_step, rewards, prompts, metadata, reward_results, advantages):
        log, _ = self._reward_log(epoch, rewards, reward_results)
        self._log(log, step=global_step)

    def _gather_components(self, reward_results) -> dict[str, np.ndarray]:
        """Per-component rewards (`reward_metadata["components"]`, as `CombinedReward` reports them), gathered."""
        names = None
        for _, meta in reward_results:
            comps = meta.get("components") if isinstance(meta, dict) else None
            if not isinstance(comps, dict):
                return {}
            names = list(comps) if names is None else names
        if not names:
            return {}
        out = {}
        for name in names:
            local = torch.cat(
                [torch.as_tensor(meta["components"][name], dtype=torch.float32).reshape(-1) for _, meta in reward_results]
            ).to(self.accelerator.device)
            out[name] = self.accelerator.gather(local).cpu().double().numpy()
        return out

    def _log(self, values: dict, step: int):
        record = {"step": step, **values}
        self.log_history.append(record)
        self.accelerator.log(values, step=step)
        logger.info("step %d: %s", step, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in values.items()})

    def train(self, epochs: int | None = None):
        """Train for `epochs` (default `config.num_epochs`) epochs, starting after a resumed checkpoint if any."""
        epochs = self.config.num_epochs if epochs is None else epochs
        global_step = self.global_step
        from tqdm.auto import tqdm

        if self.first_epoch >= epochs and getattr(self, "resumed_from", None) and self.accelerator.is_main_process:
            logger.warning(
                "resumed from %s, which has already trained %d epochs (num_epochs=%d): nothing to train; raise "
                "num_epochs to train further", self.resumed_from, self.first_epoch, epochs,
            )
        bar = tqdm(range(self.first_epoch, epochs), desc="Training", initial=self.first_epoch, total=epochs,
                   disable=not self.accelerator.is_local_main_process)
        epoch = self.first_epoch
        try:
            for epoch in bar:
                global_step = self.step(epoch, global_step)
                self.global_step = global_step
                self.first_epoch = epoch + 1
                summary = self._epoch_summary(epoch, epochs)
                if self.config.log_with is None and self.accelerator.is_local_main_process:
                    bar.write(summary)  # no tracker: the only place a user sees how training goes
        except KeyboardInterrupt:
            if self.accelerator.is_main_process:
                logger.warning("%s", self._interrupt_message(epoch))
            raise
        self.accelerator.wait_for_everyone()
        if self.config.push_to_hub:
            self._push_final()
        self._flush_trackers()
        return global_step

    def set_schedule(self, sample_guidance_scale: float | None = None, train_learning_rate: float | None = None):
        """Change the guidance of the rollouts and the learning rate between two `train()` calls (a curriculum).

        Args:
            sample_guidance_scale (`float`, *optional*): new `config.sample_guidance_scale` (>= 1; training uses it
                too when `train_cfg`).
            train_learning_rate (`float`, *optional*): new `config.train_learning_rate`, applied to every parameter
                group of the optimizer.
        """
        if sample_guidance_scale is not None:
            if not sample_guidance_scale >= 1.0:
                raise ValueError(f"sample_guidance_scale must be >= 1, got {sample_guidance_scale!r}")
            self.config.sample_guidance_scale = float(sample_guidance_scale)
        if train_learning_rate is not None:
            if not train_learning_rate > 0:
                raise ValueError(f"train_learning_rate must be > 0, got {train_learning_rate!r}")
            self.config.train_learning_rate = float(train_learning_rate)
            for group in self.optimizer.param_groups:
                group["lr"] = float(train_learning_rate)

    def _epoch_summary(self, epoch: int, epochs: int) -> str:
        """One line on `epoch` from its logs: reward mean and std (by label where logged), mean loss and KL terms."""
        records = [r for r in self.log_history if r.get("epoch") == epoch]
        parts = [f"epoch {epoch + 1}/{epochs}"]
        for r in records:
            if "reward_mean" in r:
                parts.append(f"reward {r['reward_mean']:.4g} +- {r['reward_std']:.3g}")
                parts.extend(f"{k[len('reward/'):-len('/mean')]} {v:.4g}" for k, v in r.items()
                             if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2)
        for name in ("loss", "approx_kl", "clipfrac", "kl", "structure"):
            values = [r[f"train/{name}"] for r in records if f"train/{name}" in r]
            if values:
                parts.append(f"{name} {sum(values) / len(values):.3g}")
        line = ", ".join(parts)
        logger.info("%s", line)
        return line

    def _interrupt_message(self, epoch: int) -> str:
        """What an interrupted run leaves behind and how to continue it, in one line."""
        found = list_checkpoints(self.checkpoint_dir)
        if not found:
            return (f"training interrupted during epoch {epoch}: no checkpoint saved (save_freq="
                    f"{self.config.save_freq}), nothing to resume from")
        last_epoch, path = found[-1]
        return (f"training interrupted during epoch {epoch}: saved the checkpoint after epoch {last_epoch}; continue "
                f"with --resume_from {path} (config resume_from in Python)")

    def _flush_trackers(self):
        """Write out what the trackers buffer but keep them open: `train()` may be called again (a guidance curriculum
        does), and a finished W&B run refuses to log."""
        for tracker in self.accelerator.trackers:
            flush = getattr(getattr(tracker, "writer", None), "flush", None)  # TensorBoard's SummaryWriter
            if callable(flush):
                flush()

    def end_training(self):
        """Close the trackers (finish the W&B run, close the TensorBoard writer) after the last `train()`.

        Optional: W&B finishes its run when the process exits, and `train()` already flushes TensorBoard. The process
        group stays up (unlike accelerate's `end_training`), so `save_pretrained` / `push_to_hub` may still follow.
        Calling it twice is harmless.
        """
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []

    # ================================================================== checkpoints
    def _checkpoint_path(self, epoch: int) -> str:
        return os.path.join(self.checkpoint_dir, f"{CHECKPOINT_PREFIX}{epoch}")

    def save_checkpoint(self, epoch: int, global_step: int) -> str:
        """Save the training state after `epoch` atomically: written to a temporary folder, then renamed.

        A save interrupted part-way leaves the previous checkpoint untouched and loadable.
        """
        final = self._checkpoint_path(epoch)
        tmp = final + ".tmp"
        acc = self.accelerator
        if acc.is_main_process:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(output_dir=tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"epoch": epoch, "global_step": global_step, "config": self.config.to_dict()}
            with open(os.path.join(tmp, TRAINER_STATE_NAME), "w") as f:
                json.dump(state, f, indent=2, default=str)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_checkpoints()
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        self._after_checkpoint(final, epoch)
        return final

    def _after_checkpoint(self, path: str, epoch: int):
        """Hook for subclasses and Hub publishing."""
        if self.config.push_to_hub and self.config.hub_strategy in ("every_save", "checkpoint"):
            self._push_checkpoint(path, epoch)

    def _prune_checkpoints(self):
        complete = list_checkpoints(self.checkpoint_dir)
        for _, path in complete[: max(0, len(complete) - self.config.num_checkpoint_limit)]:
            shutil.rmtree(path, ignore_errors=True)
        for name in os.listdir(self.checkpoint_dir):
            if name.endswith(".tmp"):
                shutil.rmtree(os.path.join(self.checkpoint_dir, name), ignore_errors=True)

    def _resume(self, resume_from: str):
        path = resolve_checkpoint(resume_from, token=self.config.hub_token)
        logger.info("resuming from %s", path)
        self.accelerator.load_state(path)
        with open(os.path.join(path, TRAINER_STATE_NAME)) as f:
            state = json.load(f)
        self.first_epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        self.resumed_from = path

    # ================================================================== saving / Hub
    def _citations(self) -> list[str]:
        """BibTeX entries of this trainer's method, for its model cards and sample datasets."""
        from .hub import DDPO_CITATION

        return [DDPO_CITATION]

    def _model_card_info(self) -> dict:
        """What the model card reports, read only from attributes this trainer has: DDPO (arXiv 2305.13301), its
        citation and `_tag_names`, the recipe, the reward and where the prompts came from."""
        c = self.config
        prompt_fn = getattr(self, "prompt_fn", None)
        prompt_sources = []
        if prompt_fn is not None:
            name = getattr(prompt_fn, "__name__", None) or type(prompt_fn).__name__
            prompt_sources.append(f"drawn by the prompt function `{name}`")
        return {
            "base_model": getattr(self.sd_pipeline, "pretrained_model_name", None),
            "trainer": type(self).__name__,
            "method": (
                "fine-tuned with DDPO ([Black et al., 2023](https://arxiv.org/abs/2305.13301)): reinforcement "
                "learning on the denoising steps, a clipped policy-gradient objective that makes sampled trajectories "
                "with a high reward more likely"
            ),
            "citations": self._citations(),
            "prompt_sources": prompt_sources,
            "recipe": {
                "sample_num_steps": c.sample_num_steps,
                "sample_eta": c.sample_eta,
                "sample_guidance_scale": c.sample_guidance_scale,
                "train_learning_rate": c.train_learning_rate,
                "train_batch_size": c.train_batch_size,
                "sample_batch_size": c.sample_batch_size,
                "train_clip_range": c.train_clip_range,
                "train_adv_clip_max": c.train_adv_clip_max,
                "train_timestep_window": c.train_timestep_window,
                "train_timestep_fraction": c.train_timestep_fraction,
                "num_epochs": c.num_epochs,
                "epochs_trained": self.first_epoch,
                "num_generations": getattr(c, "num_generations", None),
                "beta": getattr(c, "beta", None),
                "mixed_precision": c.mixed_precision,
                "lora": self.sd_pipeline.use_lora,
                "lora_rank": getattr(self.sd_pipeline, "lora_rank", None) if self.sd_pipeline.use_lora else None,
                "trainable_modules": ", ".join(getattr(self.sd_pipeline, "trainable_modules", None) or []) or None,
            },
            "reward": describe_reward(self.reward_fn),
            "tags": list(self._tag_names),
        }

    def save_pretrained(self, save_directory: str | None = None, fuse_lora: bool = False):
        """Save the trained model in diffusers format with a model card (main process only).

        Args:
            save_directory (`str`, *optional*): defaults to `config.output_dir`, else `<project_dir>/final_model`.
            fuse_lora (`bool`, *optional*, defaults to `False`): with LoRA, save the fused full pipeline instead of the
                LoRA weights.
        """
        save_directory = save_directory or self.config.output_dir or os.path.join(self.project_dir, "final_model")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.sd_pipeline.save_pretrained(save_directory, fuse_lora=fuse_lora)
            from .hub import write_training_model_card

            write_training_model_card(save_directory, self._model_card_info(), lora=self.sd_pipeline.use_lora and not fuse_lora,
                                      **getattr(self, "_card_overrides", {}))
        self.accelerator.wait_for_everyone()

    save_model = save_pretrained

    def push_to_hub(self, repo_id: str | None = None, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, revision: str | None = None, fuse_lora: bool = False,
                    dataset_name: str | None = None, **card_kwargs):
        """Save the model locally (under the project folder) and upload it to `repo_id` (main process only).

        `dataset_name` (TRL's keyword) and other `card_kwargs` go into the model card. Raises `HubPushError` naming the
        repo and the cause if the upload fails; the local folder stays complete.
        """
        repo_id = repo_id or self.config.hub_model_id or self.config.exp_name
        local = os.path.join(self.project_dir, "hub_model")
        if dataset_name:
            card_kwargs.setdefault("datasets", [dataset_name])
        self._card_overrides = {**getattr(self, "_card_overrides", {}), **card_kwargs, "repo_id": repo_id}
        self.save_pretrained(local, fuse_lora=fuse_lora)
        url = None
        if self.accelerator.is_main_process:
            from .hub import push_folder_to_hub

            url = push_folder_to_hub(
                local,
                repo_id,
                private=self.config.hub_private_repo if private is None else private,
                token=token or self.config.hub_token,
                commit_message=commit_message or f"{type(self).__name__}: epoch {self.first_epoch}",
                revision=revision,
            )
        self.accelerator.wait_for_everyone()
        return url

    def _push_samples(self, epoch: int, prompt_image_data, plan):
        """Publish this epoch's samples of the main process as a Hub dataset; a failure warns, training goes on."""
        if not self.accelerator.is_main_process:
            return
        from .hub import HubPushError, push_samples_dataset, samples_to_dataset

        images = torch.cat([d[0] for d in prompt_image_data]).float().cpu()
        rewards = torch.cat([d[3] for d in prompt_image_data]).float().cpu()
        label = getattr(self.config, "label_column", None)
        labels = None
        if label and plan.metadata and isinstance(plan.metadata[0], dict) and label in plan.metadata[0]:
            labels = [str(m[label]) for m in plan.metadata]
        components = {}
        for d in prompt_image_data:
            comps = d[4].get("components") if isinstance(d[4], dict) else None
            for name, values in (comps or {}).items():
                components.setdefault(name, []).append(torch.as_tensor(values).float().cpu().reshape(-1))
        components = {k: torch.cat(v) for k, v in components.items() if sum(len(x) for x in v) == len(images)}
        dataset = samples_to_dataset(images, list(plan.prompts), labels=labels, rewards=rewards,
                                     reward_components=components or None, epoch=epoch, seed=self.config.seed)
        repo_id = self.config.samples_dataset_id or f"{self.config.hub_model_id or self.config.exp_name}-samples"
        try:
            push_samples_dataset(dataset, repo_id, local_dir=os.path.join(self.project_dir, "samples_dataset"),
                                 token=self.config.hub_token, private=self.config.hub_private_repo,
                                 model_repo_id=self.config.hub_model_id, method=self._method_name,
                                 method_tags=[t for t in self._tag_names if t not in ("trl", "trl-safediffusion")],
                                 citations=self._citations())
        except HubPushError as err:
            logger.warning("%s (samples of epoch %d are kept locally)", err, epoch)

    def _push_final(self):
        self.push_to_hub(self.config.hub_model_id)

    def _push_checkpoint(self, path: str, epoch: int):
        if not self.accelerator.is_main_process:
            return
        from .hub import CheckpointPusher

        if self._hub_pusher is None:
            self._hub_pusher = CheckpointPusher(
                repo_id=self.config.hub_model_id or self.config.exp_name,
                strategy=self.config.hub_strategy,
                token=self.config.hub_token,
                private=self.config.hub_private_repo,
                is_main_process=True,
                checkpoint_limit=self.config.num_checkpoint_limit,
            )
        model_dir = os.path.join(self.project_dir, "hub_model")
        self.sd_pipeline.save_pretrained(model_dir)
        from .hub import write_training_model_card

        write_training_model_card(model_dir, self._model_card_info(), lora=self.sd_pipeline.use_lora,
                                  **{**getattr(self, "_card_overrides", {}), "repo_id": self._hub_pusher.repo_id})
        self._hub_pusher.on_save(model_dir, checkpoint_dir=path if self.config.hub_strategy == "checkpoint" else None,
                                 epoch=epoch)


def check_writable_folder(path: str, field: str) -> None:
    """Raise a one-line `ValueError` naming `field` unless `path` is a folder that can be written, or can be created.

    Nothing is left behind: a folder that does not exist yet is not created; a temporary file probes its nearest
    existing parent.
    """
    import tempfile

    full = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(f"{field}={path!r} is a file, not a folder; set {field} to a folder to write to")
    parent = full
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{field}={path!r} cannot be created: {parent} is a file; set {field} to a writable folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write to the output folder {full} for {field} ({err.strerror} in {parent}); set {field} to a "
            "writable folder"
        ) from err


def _cpu_only_multiprocess() -> bool:
    """True when launched as several processes (torchrun, accelerate, MPI) on a machine without a GPU/XPU."""
    world = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return world > 1 and not torch.cuda.is_available() and not has_xpu


def _same_std_kl(mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) KL between two Gaussians with the same std, averaged over the latent dimensions like the log-probs."""
    kl = ((mean_a - mean_b.to(mean_a.dtype)) ** 2) / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def _truthy(value) -> bool:
    """A label value as a bool: True/1/"true"/"yes"/"unsafe" (any case) are true."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "unsafe")
    return bool(value)


@contextlib.contextmanager
def _adapters_disabled(unet):
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def describe_reward(reward_fn) -> dict:
    """A JSON-able description of a reward callable for cards and logs (its `describe()` if it has one)."""
    describe = getattr(reward_fn, "describe", None)
    if callable(describe):
        return describe()
    return {"name": getattr(reward_fn, "name", None) or getattr(reward_fn, "__name__", type(reward_fn).__name__)}


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """Complete checkpoints (`checkpoint_<epoch>` holding trainer_state.json) in `folder`, oldest first."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(CHECKPOINT_PREFIX) and not name.endswith(".tmp") and os.path.isfile(
            os.path.join(path, TRAINER_STATE_NAME)
        ):
            suffix = name[len(CHECKPOINT_PREFIX):]
            if suffix.isdigit():
                out.append((int(suffix), path))
    return sorted(out)


def resolve_checkpoint(resume_from: str, token: str | None = None) -> str:
    """A complete checkpoint folder from `resume_from`: a checkpoint folder, a run folder (its latest complete
    checkpoint), or a Hub repo id (downloaded)."""
    path = os.path.normpath(os.path.expanduser(resume_from))
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            return path
        for folder in (os.path.join(path, "checkpoints"), path):
            found = list_checkpoints(folder)
            if found:
                return found[-1][1]
        raise ValueError(
            f"resume_from={resume_from!r}: no complete checkpoint (a checkpoint_<epoch> folder with "
            f"{TRAINER_STATE_NAME}) found there"
        )
    if os.path.exists(path):
        raise ValueError(f"resume_from={resume_from!r} is a file; pass a checkpoint folder, a run folder or a repo id")
    parts = resume_from.split("/")
    if len(parts) == 2 and all(parts):
        from .hub import download_checkpoint

        return download_checkpoint(resume_from, token=token)
    raise ValueError(f"resume_from={resume_from!r} is neither an existing folder nor a Hub repo id (namespace/name)")


