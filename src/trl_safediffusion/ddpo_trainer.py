"""`DDPOTrainer`: TRL v0.23.1's DDPO trainer semantics (arXiv 2305.13301), kept and fixed.

One epoch, each stage in its own module: the sample plan (`sample_plan.py`) -> rollouts through the model interface
(`pipelines/`) -> rewards (`reward_stats.py`) -> advantages (`advantages.py`) -> clipped PPO updates over the sampled
timesteps (`losses.py`) -> logs and checkpoints (`checkpointing.py`). `SafeDDPOGRPOTrainer` fills the hooks below
with what SafeDiffusion-R1 adds.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from concurrent import futures

import numpy as np
import torch
from accelerate.utils import gather_object

from .advantages import PerPromptStatTracker, batch_advantages
from .checkpointing import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE_NAME,
    CheckpointingMixin,
    check_writable_folder,
    list_checkpoints,
    resolve_checkpoint,
)
from .ddpo_config import DDPOConfig
from .hooks import NullTracker
from .losses import approx_kl, clip_fraction, clipped_surrogate_loss
from .memory import memory_budget_bytes, saved_activation_bytes, timesteps_per_forward_for_budget
from .pipelines.base import DDPOStableDiffusionPipeline, StepDistribution, check_tail_steps
from .pipelines.conditioning import as_conditioning, num_samples, repeat_rows, to_device
from .publishing import PublishingMixin, describe_reward
from .reward_stats import RewardFunctionError, call_reward, reward_components, reward_log
from .sample_plan import DDPO_NOISE, STEP_NOISE, TRAIN_ORDER, SamplePlan, mix_seed, prefix_groups, sde_window
from .tracking import TrackingMixin, cpu_only_multiprocess

logger = logging.getLogger(__name__)

# names importable from here before the stages moved to their own modules
__all__ = ["CHECKPOINT_PREFIX", "TRAINER_STATE_NAME", "DDPOTrainer", "PerPromptStatTracker", "RewardFunctionError",
           "check_writable_folder", "clipped_surrogate_loss", "cpu_only_multiprocess", "describe_reward",
           "list_checkpoints", "resolve_checkpoint"]


class DDPOTrainer(TrackingMixin, CheckpointingMixin, PublishingMixin):
    r"""
    Denoising Diffusion Policy Optimization with TRL v0.23.1's interface.

    Args:
        config (`DDPOConfig`): training configuration.
        reward_function (`Callable`): `reward_function(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`
            with `images` float (B, 3, H, W) in [0, 1] on the trainer's device and `rewards` anything
            `torch.as_tensor` takes, shape (B,).
        prompt_function (`Callable`): `prompt_function() -> (prompt, prompt_metadata)`, called once per sample.
        sd_pipeline (`DDPOStableDiffusionPipeline`): the model to train through the model interface, e.g.
            `DefaultDDPOStableDiffusionPipeline`.
        image_samples_hook (`Callable`, *optional*): `hook(prompt_image_data, global_step, tracker)` called every
            epoch; `prompt_image_data` is a list of `[images, prompts, prompt_metadata, rewards, reward_metadata]`.

    Hooks for subclasses (each documented where it is defined; the loop calls nothing else that a subclass changes):

    | hook | called | DDPO |
    |---|---|---|
    | `_setup_extra_models()` | once, after the policy is prepared, before a checkpoint is resumed | nothing |
    | `_sample_plan(epoch)` | each epoch: prompts, metadata and seeds of this process's samples | `prompt_function` per sample |
    | `_trainable_timestep_count()` | steps of a trajectory that training may pick from | all stochastic steps |
    | `_compute_advantages(rewards, prompts, metadata)` | on the gathered rewards | batch or per-prompt |
    | `_reward_log(epoch, rewards, components, metadata)` | the reward log record | mean, std, components |
    | `_sample_weights(metadata)` | per-sample weights kept with the samples | none |
    | `_policy_branches()` | whether the policy's step carries its guidance branches | False |
    | `_extra_loss_terms(batch, policy)` | named `(term, coefficient)` added to the loss, logged as `train/<name>` | none |
    | `_citations()`, `_model_card_info()`, `_tag_names`, `_method_name` | cards and sample datasets | DDPO |
    | `_after_checkpoint(path, epoch)` | after each checkpoint | Hub push |
    """

    _tag_names = ["trl", "ddpo", "trl-safediffusion"]
    _method_name = "DDPO"  # how cards and sample datasets name the training method
    _requires_prompt_function = True

    def __init__(
        self,
        config: DDPOConfig,
        reward_function: Callable,
        prompt_function: Callable | None,
        sd_pipeline: DDPOStableDiffusionPipeline,
        image_samples_hook: Callable | None = None,
    ):
        self._check_arguments(config, reward_function, prompt_function, sd_pipeline, image_samples_hook)
        self.prompt_fn = prompt_function
        self.config = config
        self.reward_fn = reward_function
        self.sd_pipeline = sd_pipeline
        if image_samples_hook is None and config.log_with is not None:
            from .hooks import image_grid_hook

            image_samples_hook = image_grid_hook()  # a captioned grid of samples with their rewards
        self.image_samples_callback = image_samples_hook
        self.log_history: list[dict] = []
        self._card_overrides: dict = {}
        self._log_prob_steps = sd_pipeline.steps_with_log_prob(config.sample_num_steps, config.sample_eta)
        self.num_train_timesteps = self._num_train_timesteps()
        self.timesteps_per_forward = self.activation_bytes_per_timestep = None  # set by the first training step
        self._sde_window(0)  # a window outside the trainable steps fails here, before the first epoch
        check_tail_steps(sd_pipeline, config.sample_tail_steps)  # before the first epoch, as the window
        self._setup_accelerator()
        self._setup_model()
        self.stat_tracker = PerPromptStatTracker(config.per_prompt_stat_tracking_buffer_size,
                                                 config.per_prompt_stat_tracking_min_count
                                                 ) if config.per_prompt_stat_tracking else None
        self.executor = futures.ThreadPoolExecutor(max_workers=config.max_workers) if config.async_reward_computation else None
        self.first_epoch, self.global_step = 0, 0
        self._hub_pusher = None
        self._setup_extra_models()
        if config.resume_from:
            self._resume(config.resume_from)

    # ================================================================== set-up
    def _check_arguments(self, config, reward_function, prompt_function, sd_pipeline, image_samples_hook):
        if self._requires_prompt_function and not callable(prompt_function):
            raise ValueError("prompt_function must be a callable returning (prompt, prompt_metadata)")
        if not isinstance(config, DDPOConfig):
            raise ValueError(f"config must be a DDPOConfig, got {type(config).__name__}")
        if not callable(reward_function):
            raise ValueError("reward_function must be callable: (images, prompts, prompt_metadata) -> (rewards, meta)")
        if not isinstance(sd_pipeline, DDPOStableDiffusionPipeline):
            raise ValueError("sd_pipeline must be a DDPOStableDiffusionPipeline (e.g. DefaultDDPOStableDiffusionPipeline),"
                             f" got {type(sd_pipeline).__name__}")
        if image_samples_hook is not None and not callable(image_samples_hook):
            raise ValueError("image_samples_hook must be callable (prompt_image_data, global_step, tracker) or None")

    def _setup_model(self):
        config, pipe, device = self.config, self.sd_pipeline, self.accelerator.device
        if pipe.lora_weights_untrained:
            # fresh adapters were drawn from the caller's global RNG when the pipeline was built: `seed` alone decides
            pipe.init_lora_weights(config.seed)
        # Frozen weights in the inference dtype, trainable ones in fp32 (full fine-tuning keeps fp32 master weights
        # and relies on autocast; casting them to fp16 is what made TRL v0.23.1 fail with "Attempting to unscale FP16
        # gradients"). The default pipeline remembers the base's dtypes and weights, so that saved folders hold them.
        pipe.cast_for_training(device, self.inference_dtype)
        pipe.set_progress_bar_config(disable=True)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        if config.gradient_checkpointing:
            pipe.model.enable_gradient_checkpointing()
        trainable = [p for p in pipe.model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the pipeline's model has no trainable parameters: use_lora=False or add LoRA adapters")
        self.optimizer = self._setup_optimizer(trainable)
        self.accelerator.register_save_state_pre_hook(self._save_model_hook)
        self.accelerator.register_load_state_pre_hook(self._load_model_hook)
        self.model, self.optimizer = self.accelerator.prepare(pipe.model, self.optimizer)
        self.trainable_layers = self.model
        self._trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        # the unconditional branch's conditioning, one row, encoded once (the text encoders are frozen)
        self.negative_conditioning = to_device(pipe.encode_conditioning([config.negative_prompts or ""]), device)

    @property
    def unet(self):
        """TRL's name for the prepared trainable model."""
        return self.model

    @property
    def neg_prompt_embed(self) -> torch.Tensor | None:
        """TRL's (1, L, D) negative prompt embeddings (Stable Diffusion's `prompt_embeds` conditioning)."""
        return self.negative_conditioning.get("prompt_embeds")

    def _setup_extra_models(self):
        """Hook: build what training needs besides the policy (e.g. a frozen reference). Runs before a checkpoint is
        resumed, so it sees the pretrained weights."""

    def _num_train_timesteps(self) -> int:
        return max(1, int(self._timestep_candidates() * self.config.train_timestep_fraction))

    def _trainable_timestep_count(self) -> int:
        """Hook: how many of the T steps of a trajectory are candidates for training (DDPO: all that have a
        log-probability)."""
        return self._log_prob_steps

    def _timestep_candidates(self) -> int:
        """How many stored steps, from the first, training picks from: the stochastic window's, or
        `train_timestep_window` of the trainable ones."""
        if self.config.sample_sde_window != "all":
            return self.config.sample_sde_window_size
        return max(1, math.ceil(self._trainable_timestep_count() * self.config.train_timestep_window - 1e-9))

    def _sde_window(self, epoch: int) -> tuple[int, int] | None:
        """`(start, stop)` of the epoch's stochastic window (`config.sample_sde_window`), None for every step."""
        c = self.config
        return sde_window(c.sample_sde_window, c.sample_sde_window_size, c.sample_sde_window_start,
                          c.sample_sde_window_shift_every, epoch, self._trainable_timestep_count(), c.seed)

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

    # ================================================================== sampling
    def _sample_plan(self, epoch: int, num_samples: int | None = None) -> SamplePlan:
        """Hook: DDPO makes one `prompt_function()` call and draws independent noise per sample (`num_samples`
        defaults to the epoch's `sample_batch_size * sample_num_batches_per_epoch`)."""
        n = num_samples or self.config.sample_batch_size * self.config.sample_num_batches_per_epoch
        prompts, metadata = [], []
        for _ in range(n):
            prompt, meta = self.prompt_fn()
            if not isinstance(prompt, str):
                raise ValueError(f"prompt_function must return (str, metadata), got a {type(prompt).__name__} prompt")
            prompts.append(prompt)
            metadata.append(meta)
        rank = self.accelerator.process_index
        seeds = [mix_seed(self.config.seed, DDPO_NOISE, epoch, rank, i) for i in range(n)]
        return SamplePlan(prompts, metadata, seeds, [mix_seed(s, STEP_NOISE) for s in seeds])

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
        plan = DDPOTrainer._sample_plan(self, 0, num_samples=iterations * batch_size)
        samples, prompt_image_data, _ = self._rollout_plan(plan, batch_size, 0, async_rewards=False)
        return samples, prompt_image_data

    def _rollout_plan(self, plan: SamplePlan, batch_size: int, epoch: int, async_rewards: bool = True):
        """Sample `plan` in batches of `batch_size` (see `_rollout_epoch`). Each batch's samples hold its conditioning
        tensors (for Stable Diffusion `prompt_embeds`, as TRL), `timesteps`, `latents`, `next_latents`, `log_probs`."""
        from tqdm.auto import tqdm

        bs, device, pipe = batch_size, self.accelerator.device, self.sd_pipeline
        samples, prompt_image_data, reward_jobs = [], [], []
        self.model.eval()
        n_batches = len(plan.prompts) // bs
        for b in tqdm(range(n_batches), desc=f"Epoch {epoch}: sampling", leave=False,
                      disable=not self.accelerator.is_local_main_process or n_batches < 2):
            sl = slice(b * bs, (b + 1) * bs)
            prompts, metadata = plan.prompts[sl], plan.metadata[sl]
            conditioning = to_device(pipe.encode_conditioning(prompts), device)
            shape = pipe.latent_shape()
            initial = torch.stack(
                [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in plan.noise_seeds[sl]]
            )
            generators = [torch.Generator(device=device).manual_seed(s) for s in plan.step_seeds[sl]]
            window = self._sde_window(epoch)
            out = pipe.rollout(
                conditioning,
                repeat_rows(self.negative_conditioning, len(prompts)),
                num_inference_steps=self.config.sample_num_steps,
                guidance_scale=self.config.sample_guidance_scale,
                eta=self.config.sample_eta,
                initial_latents=initial,
                generators=generators,
                autocast=self.accelerator.autocast, tail_steps=self.config.sample_tail_steps or None,
                stochastic_steps=window,
                # steps before the window are deterministic: computed once for the samples that share their noise
                prefix_rows=prefix_groups(prompts, plan.noise_seeds[sl]) if window else None,
            )
            samples.append(
                {
                    **conditioning,
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

    def compute_rewards(self, prompt_image_data, reward_jobs=None, epoch: int = -1):
        """Rewards of each sampled batch: a list of (rewards (B,) float32, reward_metadata)."""
        return [
            call_reward(self.reward_fn, images, prompts, metadata, reward_jobs[b] if reward_jobs else None, epoch, b,
                        self.accelerator.device)
            for b, (images, prompts, metadata) in enumerate(prompt_image_data)
        ]

    # ================================================================== advantages
    def _compute_advantages(self, rewards: np.ndarray, prompts: list[str], metadata=None) -> np.ndarray:
        """Hook: (N,) advantages of the gathered rewards. DDPO: per-prompt or batch normalisation; non-finite rewards
        get advantage 0 and are left out of statistics."""
        if self.stat_tracker is not None:
            return self.stat_tracker.update(prompts, rewards)
        return batch_advantages(rewards)

    def _sample_weights(self, metadata) -> dict[str, torch.Tensor]:
        """Hook: named (N_local,) per-sample weights kept with the samples and passed to the loss (DDPO: none)."""
        return {}

    # ================================================================== loss
    def loss(self, advantages: torch.Tensor, clip_range: float, ratio: torch.Tensor) -> torch.Tensor:
        return clipped_surrogate_loss(advantages, clip_range, ratio)

    @property
    def _train_with_cfg(self) -> bool:
        # guidance 1 samples without CFG (uncond + 1 * (cond - uncond) is cond), so training skips the wasted half too
        return bool(self.config.train_cfg) and self.config.sample_guidance_scale > 1.0

    def _training_embeds(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """TRL's training embeddings from (N, L, D) prompt embeddings: `[negative; prompt]` (2N) under CFG."""
        if self._train_with_cfg:
            return torch.cat([self.neg_prompt_embed.expand_as(prompt_embeds), prompt_embeds])
        return prompt_embeds

    def _training_conditioning(self, conditioning):
        """`(conditioning, negative_conditioning or None)` for a training forward. `conditioning` is a mapping of N
        rows, or TRL's embeddings tensor (`[negative; prompt]`, 2N rows, under CFG)."""
        if torch.is_tensor(conditioning):
            if self._train_with_cfg:
                negative, positive = conditioning.chunk(2)
                return as_conditioning(positive), as_conditioning(negative)
            return as_conditioning(conditioning), None
        conditioning = as_conditioning(conditioning)
        if not self._train_with_cfg:
            return conditioning, None
        return conditioning, repeat_rows(self.negative_conditioning, num_samples(conditioning))

    def _step(self, model, batch: dict, branches: bool = False) -> StepDistribution:
        """The step distribution of `model` at the batch's states, with the rollouts' guidance and noise level."""
        c = self.config
        return self.sd_pipeline.step_distribution(
            model, batch["latents"], batch["timesteps"], batch["conditioning"], batch["negative_conditioning"],
            c.sample_guidance_scale, c.sample_eta, next_latents=batch["next_latents"], branches=branches,
            autocast=self.accelerator.autocast,
        )

    def _policy_branches(self) -> bool:
        """Hook: whether the policy's step must carry its guidance branches (for `_extra_loss_terms`)."""
        return False

    def _extra_loss_terms(self, batch: dict, policy: StepDistribution) -> dict[str, tuple[torch.Tensor, float]]:
        """Hook: named `(term, coefficient)`; `coefficient * term` is added to the loss and `term` is logged as
        `train/<name>`. `batch` holds `latents`, `timesteps`, `next_latents`, `log_probs`, `advantages` (N rows),
        `conditioning`, `negative_conditioning` (None without CFG) and the `weights` of `_sample_weights`; `policy` is
        the policy's step distribution (with gradient). DDPO: none."""
        return {}

    def calculate_loss(self, latents, timesteps, next_latents, log_probs, advantages, embeds):
        """TRL v0.23.1's `calculate_loss`: the clipped PPO loss of a flat batch of steps.

        Returns:
            `(loss, approx_kl, clipfrac)` as in TRL. `loss` includes every extra term of the trainer (e.g. the KL to
            the reference); [`~DDPOTrainer.compute_loss_terms`] returns each term by name.
        """
        terms = self.compute_loss_terms(latents, timesteps, next_latents, log_probs, advantages, embeds)
        return terms["loss"], terms["approx_kl"], terms["clipfrac"]

    def compute_loss_terms(
        self, latents, timesteps, next_latents, log_probs, advantages, conditioning, sample_weights=None
    ) -> dict[str, torch.Tensor]:
        """Clipped PPO loss for a flat batch of steps, plus the trainer's extra terms.

        Args:
            latents, next_latents (`torch.Tensor`): (N, C, h, w) x_t and the stored next latent.
            timesteps (`torch.Tensor`): (N,).
            log_probs (`torch.Tensor`): (N,) log-probabilities recorded at sampling time.
            advantages (`torch.Tensor`): (N,).
            conditioning (`Mapping[str, torch.Tensor]` or `torch.Tensor`): N rows of prompt conditioning, or TRL's
                embeddings (`[negative; prompt]`, 2N rows, with `train_cfg`).
            sample_weights (`dict[str, torch.Tensor]`, *optional*): (N,) weights by name (see `_sample_weights`).

        Returns:
            `dict` of 0-dim tensors: `loss` (with every extra term), `approx_kl`, `clipfrac`, and each extra term.
        """
        c = self.config
        conditioning, negative = self._training_conditioning(conditioning)
        batch = {
            "latents": latents, "timesteps": timesteps, "next_latents": next_latents, "log_probs": log_probs,
            "advantages": advantages, "conditioning": conditioning, "negative_conditioning": negative,
            "weights": dict(sample_weights or {}),
        }
        policy = self._step(self.model, batch, branches=self._policy_branches())
        advantages = torch.clamp(advantages, -c.train_adv_clip_max, c.train_adv_clip_max)
        ratio = torch.exp(policy.log_probs - log_probs)
        loss = self.loss(advantages, c.train_clip_range, ratio)
        terms = {"approx_kl": approx_kl(policy.log_probs, log_probs), "clipfrac": clip_fraction(ratio, c.train_clip_range)}
        for name, (term, coefficient) in self._extra_loss_terms(batch, policy).items():
            terms[name] = term
            if coefficient:
                loss = loss + coefficient * term
        return {"loss": loss, **terms}

    # ================================================================== training
    def _train_on_samples(self, samples: dict, epoch: int, global_step: int) -> int:
        c = self.config
        device = self.accelerator.device
        n_local, T = samples["timesteps"].shape
        k_train = self.num_train_timesteps
        candidates = self._timestep_candidates()
        accum = c.train_gradient_accumulation_steps
        keys = tuple(self.negative_conditioning)
        weights = samples.get("sample_weights", {})
        chunk = self._stack_size(samples, keys, weights)
        from tqdm.auto import tqdm

        for inner_epoch in range(c.train_num_inner_epochs):
            g = torch.Generator().manual_seed(mix_seed(c.seed, TRAIN_ORDER, epoch, inner_epoch,
                                                       self.accelerator.process_index))
            perm = torch.randperm(n_local, generator=g)
            # each sample trains on its own random subset of timesteps (DDPO's per-sample time shuffle)
            time_idx = torch.argsort(torch.rand(n_local, candidates, generator=g), dim=1)[:, :k_train]  # (N, k)
            perm_d, time_idx = perm.to(device), time_idx.to(device)
            self.model.train()
            n_mb = n_local // c.train_batch_size
            info = defaultdict(list)
            for mb in tqdm(range(n_mb), desc=f"Epoch {epoch}: training", leave=False,
                           disable=not self.accelerator.is_local_main_process or n_mb < 2):
                idx = perm_d[mb * c.train_batch_size : (mb + 1) * c.train_batch_size]
                t_idx = time_idx[idx]  # (b, k)
                rows = idx[:, None].expand_as(t_idx)
                last_in_step = (mb + 1) % accum == 0 or mb == n_mb - 1
                chunks = [(j, min(j + chunk, k_train)) for j in range(0, k_train, chunk)]
                for ci, (j0, j1) in enumerate(chunks):
                    sel_rows, sel_t = rows[:, j0:j1].reshape(-1), t_idx[:, j0:j1].reshape(-1)
                    sync = last_in_step and ci == len(chunks) - 1
                    ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)
                    with ctx:
                        terms = self._loss_terms_at(samples, keys, weights, sel_rows, sel_t)
                        # mean over the k sampled timesteps and the accumulated minibatches, as TRL's accumulation
                        self.accelerator.backward(terms["loss"] * ((j1 - j0) / k_train / accum))
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
                    if c.train_timesteps_per_forward == "auto":
                        logged["train/timesteps_per_forward"] = chunk
                    self._log(logged, step=global_step)
                    global_step += 1
                    info = defaultdict(list)
        return global_step

    def _loss_terms_at(self, samples: dict, keys: tuple, weights: dict, rows, steps) -> dict[str, torch.Tensor]:
        """`compute_loss_terms` of the stored steps `(rows[i], steps[i])`."""
        return self.compute_loss_terms(
            samples["latents"][rows, steps], samples["timesteps"][rows, steps], samples["next_latents"][rows, steps],
            samples["log_probs"][rows, steps], samples["advantages"][rows], {k: samples[k][rows] for k in keys},
            sample_weights={name: w[rows] for name, w in weights.items()},
        )

    def _stack_size(self, samples: dict, keys: tuple, weights: dict) -> int:
        """`train_timesteps_per_forward`, or for "auto" the largest stack whose activations fit the memory budget:
        measured once, on a forward of the first `train_batch_size` samples at one timestep (no backward), and the
        smallest over processes. Logged as `train/timesteps_per_forward`."""
        c, device = self.config, self.accelerator.device
        if c.train_timesteps_per_forward != "auto":
            return c.train_timesteps_per_forward
        if self.timesteps_per_forward is None:
            k = self.num_train_timesteps
            if k > 1:
                rows = torch.arange(min(c.train_batch_size, samples["timesteps"].shape[0]), device=device)
                measured = saved_activation_bytes(
                    lambda: self._loss_terms_at(samples, keys, weights, rows, torch.zeros_like(rows))["loss"],
                    exclude=[self.model])
                fit = timesteps_per_forward_for_budget(measured, memory_budget_bytes(device, c.train_memory_budget_gb), k)
                k = int(self.accelerator.gather(torch.tensor([fit], device=device)).min())
                self.activation_bytes_per_timestep = measured
                logger.info("train_timesteps_per_forward=auto: %d of %d timesteps per forward (%.1f MB of "
                            "activations per timestep)", k, self.num_train_timesteps, measured / 1e6)
            self.timesteps_per_forward = k
        return self.timesteps_per_forward

    # ================================================================== epoch
    def step(self, epoch: int, global_step: int) -> int:
        """Sample, reward, compute advantages and train for one epoch. Returns the updated global step."""
        acc = self.accelerator
        samples, prompt_image_data, reward_jobs, plan = self._rollout_epoch(epoch)
        reward_results = self.compute_rewards(prompt_image_data, reward_jobs, epoch=epoch)
        for data, (rewards, meta) in zip(prompt_image_data, reward_results):
            data.extend([rewards, meta])
        if self.image_samples_callback is not None:
            tracker = acc.trackers[0] if acc.trackers else NullTracker()
            self.image_samples_callback(prompt_image_data, global_step, tracker)

        samples = {k: torch.cat([s[k] for s in samples]) for k in samples[0]}
        local_rewards = torch.cat([r for r, _ in reward_results])
        rewards = acc.gather(local_rewards).cpu().double().numpy()
        if not np.isfinite(rewards).any() and acc.is_main_process:
            logger.warning(
                "epoch %d: all %d rewards are NaN or infinite, so every advantage is 0 and this epoch trains nothing; "
                "check the reward function", epoch, rewards.size,
            )
        prompts = gather_object(list(plan.prompts)) if acc.num_processes > 1 else list(plan.prompts)
        metadata = gather_object(list(plan.metadata)) if acc.num_processes > 1 else list(plan.metadata)
        advantages = self._compute_advantages(rewards, prompts, metadata)
        components = {name: acc.gather(v.to(acc.device)).cpu().double().numpy()
                      for name, v in reward_components(reward_results).items()}
        log = self._reward_log(epoch, rewards, components, metadata)
        window = self._sde_window(epoch)
        if window is not None:
            log["sde_window_start"] = window[0]
        self._log(log, step=global_step)

        n_local = local_rewards.shape[0]
        start = acc.process_index * n_local
        samples["advantages"] = torch.as_tensor(advantages[start : start + n_local], dtype=torch.float32,
                                                device=acc.device)
        samples["sample_weights"] = self._sample_weights(plan.metadata)
        if self.config.push_samples_every and epoch % self.config.push_samples_every == 0:
            self._push_samples(epoch, prompt_image_data, plan)
        global_step = self._train_on_samples(samples, epoch, global_step)
        if self.config.save_freq and (epoch + 1) % self.config.save_freq == 0:
            self.save_checkpoint(epoch, global_step)
        return global_step

    def _reward_log(self, epoch: int, rewards: np.ndarray, components: dict, metadata) -> dict:
        """Hook: the epoch's reward log record from the gathered rewards, components and metadata."""
        return reward_log(epoch, rewards, components, self.config.sample_guidance_scale)

    def train(self, epochs: int | None = None):
        """Train for `epochs` (default `config.num_epochs`) epochs, starting after a resumed checkpoint if any."""
        from tqdm.auto import tqdm

        epochs = self.config.num_epochs if epochs is None else epochs
        global_step = self.global_step
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


_cpu_only_multiprocess = cpu_only_multiprocess  # the name the CLI imported before it was public
