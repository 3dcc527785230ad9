"""The model interface: everything the DDPO / GRPO trainers call on a model, declared here.

A model family plugs in by subclassing [`DDPOStableDiffusionPipeline`] (the name TRL v0.23.1 gave it) and
implementing the methods marked *required*; the trainers call nothing else. The sampling loop ([`rollout`]) is written
once, here, over those methods.

What a family provides:
- `model`: the trainable denoiser (a UNet, a transformer), a diffusers `ModelMixin`.
- `encode_conditioning(prompts)`: the prompt conditioning, a mapping of per-sample tensors
  ([`~trl_safediffusion.pipelines.conditioning`]); frozen, so it may be cached.
- `set_timesteps`, `scale_initial_noise`, `latent_shape`, `step_std`: the sampling schedule and its noise.
- `step_distribution(model, latents, timesteps, conditioning, ...)`: the Gaussian step of `model` at x_t (mean,
  std, log-prob of a given or sampled next latent, predicted x0), with classifier-free guidance when given the
  negative conditioning and a scale > 1. Sampling, the PPO ratio, the KL to a reference and any anchor all use it.
- `decode_latents`: latents to float images (B, 3, H, W) in [0, 1].
- saving and checkpoint hooks in the family's stock diffusers format.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from ..schedulers.ddim_with_logprob import DDPOSchedulerOutput
from .conditioning import Conditioning, as_conditioning, num_samples, repeat_rows, select

logger = logging.getLogger(__name__)


@dataclass
class DDPOPipelineOutput:
    """TRL-compatible output of `DDPOStableDiffusionPipeline.__call__`.

    Args:
        images (`torch.Tensor`): (B, 3, H, W) in [0, 1] (or PIL images / numpy with other `output_type`).
        latents (`list[torch.Tensor]`): T + 1 latents, each (B, C, h, w).
        log_probs (`list[torch.Tensor]`): T log-probabilities, each (B,).
    """

    images: object
    latents: list
    log_probs: list


@dataclass
class RolloutOutput:
    """A batch of trajectories from [`DDPOStableDiffusionPipeline.rollout`].

    Args:
        images (`torch.Tensor`): decoded images (B, 3, H, W), float32 in [0, 1] (None with `decode=False`).
        latents (`torch.Tensor`): (B, T + 1, C, h, w) float32, the initial noise first.
        log_probs (`torch.Tensor`): (B, T) float32 log-probability of each step's sampled latent.
        timesteps (`torch.Tensor`): (T,) the scheduler timesteps of the steps.
        first_step (`int`): index of the first returned step (the start of a stochastic window; 0 for all steps).
    """

    images: torch.Tensor | None
    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    first_step: int = 0


@dataclass
class StepDistribution(DDPOSchedulerOutput):
    """The Gaussian step x_t -> x_next of a model at one state (a `DDPOSchedulerOutput` with the CFG branches).

    Args:
        latents (`torch.Tensor`): the next latent, (B, C, h, w) float32: the one given, or a sample.
        log_probs (`torch.Tensor`): (B,) its log-density, averaged over the latent dimensions.
        prev_sample_mean (`torch.Tensor`): (B, C, h, w) the mean (also `mean`).
        std_dev_t (`torch.Tensor`): the std, broadcastable to the latents (also `std`).
        pred_original_sample (`torch.Tensor`): (B, C, h, w) the predicted clean latent x0.
        branches (`tuple`, *optional*): `(uncond, cond)`, the steps each guidance branch alone gives, when asked for
            with `branches=True` under classifier-free guidance.
    """

    branches: tuple[StepDistribution, StepDistribution] | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.prev_sample_mean

    @property
    def std(self) -> torch.Tensor:
        return self.std_dev_t

    @classmethod
    def from_scheduler_output(cls, out: DDPOSchedulerOutput, branches=None) -> StepDistribution:
        return cls(out.latents, out.log_probs, out.prev_sample_mean, out.std_dev_t, out.pred_original_sample, branches)


def tail_schedule(stop: int, num_steps: int, tail_steps: int | None) -> list[int] | None:
    """The steps of a shortened deterministic tail: `tail_steps` evenly spaced indices of steps `stop .. num_steps - 1`
    (the first is `stop`), each taken as one step to the next index (the last to the end); None when the tail keeps
    every step (`tail_steps` None, or no fewer than the `num_steps - stop` steps left)."""
    if tail_steps is not None and tail_steps < 1:
        raise ValueError(f"tail_steps must be >= 1 (or None for every step), got {tail_steps}")
    if tail_steps is None or tail_steps >= num_steps - stop:
        return None
    left = num_steps - stop
    return [stop + (k * left) // tail_steps for k in range(tail_steps)]


def check_tail_steps(pipeline, tail_steps: int):
    """Raise a `ValueError` naming `sample_tail_steps` when `tail_steps` > 0 and `pipeline`'s family does not implement
    `deterministic_step` (the trainers call this before the first epoch)."""
    if tail_steps and type(pipeline).deterministic_step is DDPOStableDiffusionPipeline.deterministic_step:
        raise ValueError(f"sample_tail_steps={tail_steps} needs {type(pipeline).__name__}.deterministic_step() (see "
                         "the model interface); implement it or set sample_tail_steps=0")


def _required(self, name: str):
    return NotImplementedError(f"{type(self).__name__} must implement {name}() to be trained (see the model interface "
                               "in trl_safediffusion.pipelines.base)")


class DDPOStableDiffusionPipeline:
    """The model interface of the DDPO / GRPO trainers. Subclass it to train another diffusion model.

    Attributes read by the trainers and model cards: `use_lora`, `lora_weights_untrained` (True while LoRA adapters
    hold the weights they were created with: the trainer then calls `init_lora_weights(config.seed)` so that the seed
    alone decides them), `pretrained_model_name`, `lora_rank`, `trainable_modules`, `diffusers_pipeline_class_name` and
    `family_tags`.
    """

    use_lora: bool = False
    lora_weights_untrained: bool = False
    pretrained_model_name: str | None = None
    lora_rank: int | None = None
    trainable_modules: list[str] | None = None
    diffusers_pipeline_class_name: str | None = None  # the family's stock diffusers class (model cards, loading)
    family_tags: tuple[str, ...] = ()  # the family's Hub tags (model cards)

    # ------------------------------------------------------------------ the trainable model (required)
    @property
    def model(self) -> torch.nn.Module:
        """The trainable denoiser (a diffusers `ModelMixin`: a UNet or a transformer)."""
        raise _required(self, "model")

    @property
    def unet(self):
        """TRL's name for the trainable model."""
        return self.model

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The frozen components (text encoders, VAE) that `cast_for_training` moves to the inference dtype."""
        raise _required(self, "frozen_modules")

    def init_lora_weights(self, seed: int):
        """Draw fresh LoRA adapter weights from `seed` alone (required with `use_lora`)."""
        raise _required(self, "init_lora_weights")

    @contextlib.contextmanager
    def adapters_disabled(self, model=None):
        """Within the block `model` (default `self.model`) is the base model: its LoRA adapters are off."""
        model = self.model if model is None else model
        model.disable_adapters()
        try:
            yield model
        finally:
            model.enable_adapters()

    def cast_for_training(self, device, inference_dtype: torch.dtype):
        r"""
        Place the components for training (the trainer calls this once, before preparing the model): the frozen
        modules on `device` in `inference_dtype`; with LoRA the frozen base weights of the model in `inference_dtype`
        and the trainable adapter weights in float32; otherwise the whole model in float32 (master weights for
        autocast, so that the fp16 grad scaler only sees fp32 parameters).

        This default casts in place and forgets the dtypes the components had; a pipeline whose saved folders must
        keep the base's weights overrides it (see [`DefaultDDPOStableDiffusionPipeline.cast_for_training`]).

        Args:
            device (`torch.device`): the training device.
            inference_dtype (`torch.dtype`): float32, or the mixed-precision dtype (bf16 / fp16).
        """
        for module in self.frozen_modules():
            module.to(device, dtype=inference_dtype)
        if self.use_lora:
            self.model.to(device, dtype=inference_dtype)
            for p in self.model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            self.model.to(device, dtype=torch.float32)

    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config = dict(kwargs)

    def get_trainable_layers(self):
        return self.model

    # ------------------------------------------------------------------ conditioning (required)
    def encode_conditioning(self, prompts: list[str]) -> Conditioning:
        """The prompt conditioning of `prompts`: a mapping of tensors with one row per prompt."""
        raise _required(self, "encode_conditioning")

    # ------------------------------------------------------------------ sampling schedule (required)
    def set_timesteps(self, num_inference_steps: int, device=None) -> torch.Tensor:
        """Set the scheduler up for a `num_inference_steps` rollout; returns its (T,) timesteps."""
        raise _required(self, "set_timesteps")

    def scale_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The first latent of a rollout from standard normal `noise` (the scheduler's initial sigma)."""
        return noise

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """The shape of one sample's latent (without the batch dimension) for images of `height` x `width`
        (default: the model's native size)."""
        raise _required(self, "latent_shape")

    def step_std(self, num_inference_steps: int, eta: float) -> torch.Tensor:
        """(T,) standard deviation of each step of a `num_inference_steps` rollout; a step with std 0 is never
        trained on."""
        raise _required(self, "step_std")

    def steps_with_log_prob(self, num_inference_steps: int, eta: float) -> int:
        """How many steps of a `num_inference_steps` rollout, from the first, are stochastic. Only the last may have
        zero variance (a DDIM scheduler with `set_alpha_to_one=True`, or a last timestep of 0): it is sampled, never
        trained on (its log-probability does not exist). Anything else is a `ValueError`."""
        std = self.step_std(num_inference_steps, eta)  # (T,)
        zero = [int(i) for i in torch.nonzero(std == 0).reshape(-1)]
        if not zero:
            return num_inference_steps
        if zero != [num_inference_steps - 1] or num_inference_steps == 1:
            raise ValueError(
                f"steps {zero} of the {num_inference_steps}-step schedule have zero variance and no log-probability; "
                "raise sample_num_steps, or set the scheduler's set_alpha_to_one=False and steps_offset=1"
            )
        logger.info("the last of the %d sampling steps has zero variance (scheduler set_alpha_to_one=True or a last "
                    "timestep of 0): it is sampled but never trained on", num_inference_steps)
        return num_inference_steps - 1

    def step_distribution(
        self,
        model,
        latents: torch.Tensor,
        timesteps,
        conditioning: Conditioning,
        negative_conditioning: Conditioning | None = None,
        guidance_scale: float = 1.0,
        eta: float = 1.0,
        next_latents: torch.Tensor | None = None,
        generator=None,
        branches: bool = False,
        autocast=None,
    ) -> StepDistribution:
        r"""
        The step distribution of `model` at the state `latents` (required).

        Args:
            model (`torch.nn.Module`): the denoiser to evaluate (the policy, possibly wrapped for distributed
                training, or a reference).
            latents (`torch.Tensor`): (B, C, h, w) x_t.
            timesteps (`torch.Tensor` or `int`): (B,) or a scalar.
            conditioning (`Mapping[str, torch.Tensor]`): B rows.
            negative_conditioning (`Mapping[str, torch.Tensor]`, *optional*): B rows of the unconditional branch;
                with `guidance_scale > 1` classifier-free guidance combines the two predictions.
            guidance_scale (`float`): the guidance scale.
            eta (`float`): the step's noise level (DDIM's eta).
            next_latents (`torch.Tensor`, *optional*): the next latent whose log-probability is wanted; sampled
                (with `generator`) when omitted.
            generator (`torch.Generator` or list of them, *optional*): for the sampled next latent.
            branches (`bool`): also return the step of each guidance branch (`StepDistribution.branches`).
            autocast (*optional*): a context-manager factory used around the model call (mixed precision).
        """
        raise _required(self, "step_distribution")

    def deterministic_step(
        self,
        model,
        latents: torch.Tensor,
        index: int,
        next_index: int,
        conditioning: Conditioning,
        negative_conditioning: Conditioning | None = None,
        guidance_scale: float = 1.0,
        autocast=None,
    ) -> torch.Tensor:
        r"""
        The deterministic step of `model` (DDIM with eta 0, the flow ODE's Euler step) from the state of step `index`
        of the schedule last set by `set_timesteps` to the state of step `next_index`, skipping the steps between:
        `next_index = index + 1` is the ordinary deterministic step, `next_index = T` (the number of steps) goes to
        the end of the schedule. Required for `rollout(tail_steps=...)` only.

        Args:
            latents (`torch.Tensor`): (B, C, h, w) the state at step `index`.
            index (`int`), next_index (`int`): `0 <= index < next_index <= T`.
            conditioning, negative_conditioning, guidance_scale, autocast: as for `step_distribution`.

        Returns:
            `torch.Tensor`: (B, C, h, w) float32, the state at step `next_index`.
        """
        raise _required(self, "deterministic_step")

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Float32 images (B, 3, H, W) in [0, 1] (required)."""
        raise _required(self, "decode_latents")

    # ------------------------------------------------------------------ the sampling loop
    @torch.no_grad()
    def rollout(
        self,
        conditioning,
        negative_conditioning=None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        eta: float = 1.0,
        initial_latents: torch.Tensor | None = None,
        generators: list[torch.Generator] | torch.Generator | None = None,
        height: int | None = None,
        width: int | None = None,
        autocast=None,
        decode: bool = True,
        show_progress: bool = False,
        stochastic_steps: tuple[int, int] | None = None,
        prefix_rows=None,
        model: torch.nn.Module | None = None,
        tail_steps: int | None = None,
    ) -> RolloutOutput:
        """Sample trajectories with the step distribution at every step (classifier-free guidance when
        `guidance_scale > 1`).

        Args:
            conditioning (`Mapping[str, torch.Tensor]` or `torch.Tensor`): B rows (a bare tensor is the prompt
                embeddings).
            negative_conditioning (*optional*): the unconditional branch's conditioning, B rows or one row (repeated);
                encoded from the empty prompt when omitted and `guidance_scale > 1`.
            initial_latents (`torch.Tensor`, *optional*): (B, *latent_shape) standard normal starting noise (e.g.
                shared within a group).
            generators (list of `torch.Generator`, *optional*): one per sample, for the initial noise (when
                `initial_latents` is None) and every step's noise: a sample's trajectory then does not depend on the
                batch it was drawn in.
            autocast (*optional*): a context-manager factory used around the model (mixed precision).
            stochastic_steps (`tuple[int, int]`, *optional*): `(start, stop)`: only steps `start <= i < stop` are
                stochastic (noise level `eta`), the others deterministic (eta 0: DDIM's deterministic step, the flow
                ODE), and only the window is returned (`latents` (B, stop - start + 1), `log_probs` and `timesteps` of
                its steps, `first_step = start`). Default: every step (Flow-GRPO-Fast and MixGRPO train windows).
            prefix_rows (sequence of `int`, *optional*): (B,) ids; rows with the same id start from the same noise
                with the same conditioning (a GRPO group), so the deterministic steps before the window are computed
                once per id and shared: the same arithmetic as per row, on fewer rows (bit-identical for a model
                whose rows do not depend on their batch; CPU kernels round batch-size-dependently, ~1e-6).
            model (`torch.nn.Module`, *optional*): the denoiser to roll out (default: `self.model`).
            tail_steps (`int`, *optional*): with `stochastic_steps`, the deterministic steps after the window are
                taken as this many larger steps (`deterministic_step` between evenly spaced steps of the rest of the
                schedule, the last one to its end): fewer model evaluations for the images the reward scores. None,
                or at least as many as remain, keeps every step.
        """
        from tqdm.auto import tqdm

        conditioning = as_conditioning(conditioning)
        model = self.model if model is None else model
        device = next(model.parameters()).device
        batch = num_samples(conditioning)
        cfg = guidance_scale > 1.0
        if cfg and negative_conditioning is None:
            negative_conditioning = self.encode_conditioning([""] * batch)
        if negative_conditioning is not None:
            negative_conditioning = as_conditioning(negative_conditioning)
            if num_samples(negative_conditioning) != batch:
                negative_conditioning = repeat_rows(negative_conditioning, batch)
        timesteps = self.set_timesteps(num_inference_steps, device=device)
        shape = self.latent_shape(height, width)
        if initial_latents is None:
            if isinstance(generators, (list, tuple)):
                initial_latents = torch.stack(
                    [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
                )
            else:
                initial_latents = torch.randn((batch, *shape), generator=generators, dtype=torch.float32)
        latents = self.scale_initial_noise(initial_latents.to(device=device, dtype=torch.float32))
        negative = negative_conditioning if cfg else None
        start, stop = (0, len(timesteps)) if stochastic_steps is None else stochastic_steps
        if not 0 <= start < stop <= len(timesteps):
            raise ValueError(f"stochastic_steps={stochastic_steps} must be (start, stop) with 0 <= start < stop <= "
                             f"{len(timesteps)} (the number of steps)")
        tail = tail_schedule(stop, len(timesteps), tail_steps)
        first = 0
        if prefix_rows is not None and start > 0:
            latents = self._shared_prefix(model, latents, timesteps[:start], conditioning, negative, guidance_scale,
                                          prefix_rows, autocast)
            first = start
        all_latents, all_log_probs = [], []
        last = len(timesteps) if tail is None else stop
        for i in tqdm(range(first, last), desc="Sampling", leave=False, disable=not show_progress):
            if i == start:
                all_latents.append(latents)
            step = self.step_distribution(
                model, latents, timesteps[i], conditioning, negative, guidance_scale, eta if start <= i < stop else 0.0,
                generator=generators, autocast=autocast,
            )
            latents = step.latents
            if start <= i < stop:
                all_latents.append(latents)
                all_log_probs.append(step.log_probs)
        for i, j in zip(tail or [], (tail or [])[1:] + [len(timesteps)]):
            latents = self.deterministic_step(model, latents, i, j, conditioning, negative, guidance_scale, autocast)
        images = self.decode_latents(latents) if decode else None
        return RolloutOutput(
            images=images,
            latents=torch.stack(all_latents, dim=1),  # (B, W + 1, C, h, w), W = stop - start (T by default)
            log_probs=torch.stack(all_log_probs, dim=1),  # (B, W)
            timesteps=timesteps[start:stop].clone(),  # (W,)
            first_step=start,
        )

    def _shared_prefix(self, model, latents, timesteps, conditioning, negative, guidance_scale, prefix_rows, autocast):
        """The deterministic steps `timesteps` computed once per id of `prefix_rows`, then given to every row."""
        ids = [int(i) for i in prefix_rows]
        if len(ids) != latents.shape[0]:
            raise ValueError(f"prefix_rows has {len(ids)} ids for a batch of {latents.shape[0]}")
        first: dict[int, int] = {}
        for row, key in enumerate(ids):
            first.setdefault(key, row)
        reps = torch.tensor(list(first.values()), device=latents.device)
        position = {key: i for i, key in enumerate(first)}
        inverse = torch.tensor([position[key] for key in ids], device=latents.device)
        if not torch.equal(latents[reps][inverse], latents):
            raise ValueError("prefix_rows groups rows whose initial noise differs; only rows that share their noise "
                             "(and prompt) share a prefix")
        sub, cond = latents[reps], select(conditioning, reps)
        neg = select(negative, reps) if negative is not None else None
        for t in timesteps:
            sub = self.step_distribution(model, sub, t, cond, neg, guidance_scale, 0.0, autocast=autocast).latents
        return sub[inverse]

    # ------------------------------------------------------------------ saving (required)
    def save_pretrained(self, output_dir: str, fuse_lora: bool = False):
        """Save in the family's stock diffusers format (a full pipeline, or LoRA weights)."""
        raise _required(self, "save_pretrained")

    def save_checkpoint(self, models, weights, output_dir):
        """accelerate `save_state` pre-hook: the trainable model (or its LoRA weights)."""
        raise _required(self, "save_checkpoint")

    def load_checkpoint(self, models, input_dir):
        """accelerate `load_state` pre-hook: the inverse of `save_checkpoint`."""
        raise _required(self, "load_checkpoint")

    # ------------------------------------------------------------------ TRL v0.23.1 names (not used by the trainers)
    # TRL's interface also declared the components `vae`, `tokenizer`, `scheduler`, `text_encoder` and `autocast`:
    # they are family-specific, so the adapters have them (the Stable Diffusion one does) and the interface does not.
    def __call__(self, *args, **kwargs) -> DDPOPipelineOutput:
        raise _required(self, "__call__")

    def scheduler_step(self, *args, **kwargs) -> DDPOSchedulerOutput:
        raise _required(self, "scheduler_step")
