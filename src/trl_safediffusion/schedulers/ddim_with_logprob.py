"""A DDIM step that also returns the log-probability of the next latent under the policy.

DDIM eq. 12 and 16 (arXiv 2010.02502): with eta > 0 the step x_t -> x_{t-1} is Gaussian with mean
sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps_hat and standard deviation sigma_t = eta * sqrt(var_t),
var_t = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev). DDPO (arXiv 2305.13301) treats this step as the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class DDPOSchedulerOutput:
    """Output of [`ddim_step_with_logprob`].

    Args:
        latents (`torch.Tensor`): the next latent x_{t-1}, shape (B, C, h, w), float32 (kept in full precision so
            that the log-probability recomputed in training refers to exactly the stored value).
        log_probs (`torch.Tensor`): log-density of `latents` per sample, averaged over the latent dimensions, (B,).
        prev_sample_mean (`torch.Tensor`): the Gaussian mean, (B, C, h, w), float32.
        std_dev_t (`torch.Tensor`): the Gaussian standard deviation per sample, broadcastable (B, 1, 1, 1), float32.
        pred_original_sample (`torch.Tensor`, *optional*): the predicted clean latent x0_hat the step moves towards,
            (B, C, h, w), float32.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    prev_sample_mean: torch.Tensor
    std_dev_t: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian log-density averaged over all non-batch dimensions (the DDPO convention)."""
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def _ddim_variance(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor) -> torch.Tensor:
    """DDIM eq. 16's variance without eta: (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), never negative."""
    return ((1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)).clamp(min=0)


def ddim_step_std(scheduler, num_inference_steps: int, eta: float = 1.0) -> torch.Tensor:
    """Standard deviation of each of the `num_inference_steps` DDIM steps of `scheduler`'s schedule, (T,) float32.

    A step whose std is 0 (the last one when the scheduler has `set_alpha_to_one=True`, its previous alpha being 1,
    or when the last timestep is 0 with the final alpha `alphas_cumprod[0]`) is deterministic: its next latent has no log-probability, and it cannot be trained on. Calls
    `scheduler.set_timesteps(num_inference_steps)`.
    """
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps.to(dtype=torch.long)
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = timesteps - step
    alphas_cumprod = scheduler.alphas_cumprod.to(dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    alpha_prod_t = alphas_cumprod.gather(0, timesteps.clamp(min=0))
    alpha_prod_prev = torch.where(prev >= 0, alphas_cumprod.gather(0, prev.clamp(min=0)), final)
    return eta * _ddim_variance(alpha_prod_t, alpha_prod_prev).sqrt()


def _expand(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
    prev_timestep: torch.Tensor | int | None = None,
) -> DDPOSchedulerOutput:
    """One DDIM step of `scheduler` (a diffusers `DDIMScheduler` after `set_timesteps`) with its log-probability.

    Computed in float32 whatever the dtype of the inputs (bf16/fp16 autocast included).

    Args:
        scheduler (`DDIMScheduler`): supplies `alphas_cumprod`, `final_alpha_cumprod`, `prediction_type`,
            `clip_sample` and the number of inference steps.
        model_output (`torch.Tensor`): UNet output (B, C, h, w): epsilon, v or x0 by `prediction_type`.
        timestep (`torch.Tensor` or `int`): current timestep, a scalar or one per sample (B,).
        sample (`torch.Tensor`): current latent x_t (B, C, h, w).
        eta (`float`, *optional*, defaults to `1.0`): DDIM eta, > 0 for a log-probability; 0 samples the
            deterministic DDIM step (a log-probability of 0 is reported; no `prev_sample` may be scored).
        prev_sample (`torch.Tensor`, *optional*): if given, the log-probability of this x_{t-1} is returned (training);
            otherwise x_{t-1} is drawn (sampling).
        generator (`torch.Generator` or list of them, *optional*): noise source when sampling; a list gives one
            generator per sample so each sample's noise is independent of the batch it is in.
        noise (`torch.Tensor`, *optional*): explicit standard normal noise (B, C, h, w) for sampling.
        prev_timestep (`torch.Tensor` or `int`, *optional*): the timestep to step to, a scalar or one per sample
            (B,), below `timestep`; a negative value is the end of the schedule (`final_alpha_cumprod`). Default: one
            step of the schedule, `timestep - num_train_timesteps // num_inference_steps`. DDIM's update holds between
            any two timesteps (eq. 12), so a larger jump skips the steps between (a coarser deterministic tail).
    """
    if eta < 0 or (eta == 0 and prev_sample is not None):
        raise ValueError(f"eta must be > 0 for a log-probability, got {eta} (eta = 0 only samples the deterministic "
                         "step, whose log-probability is reported as 0)")
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) before ddim_step_with_logprob")
    if getattr(scheduler.config, "thresholding", False):
        raise ValueError("dynamic thresholding is not supported by ddim_step_with_logprob; disable it in the scheduler")

    model_output = model_output.float()
    sample = sample.float()
    batch = sample.shape[0]
    device = sample.device
    if not torch.is_tensor(timestep):
        timestep = torch.tensor(timestep)
    timestep = timestep.to(device=device, dtype=torch.long).reshape(-1)
    if timestep.numel() == 1:
        timestep = timestep.expand(batch)

    if prev_timestep is None:
        prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    else:
        prev_timestep = torch.as_tensor(prev_timestep).to(device=device, dtype=torch.long).reshape(-1)
        prev_timestep = prev_timestep.expand(batch) if prev_timestep.numel() == 1 else prev_timestep
        if bool((prev_timestep >= timestep).any()):
            raise ValueError(f"prev_timestep {prev_timestep.tolist()[:3]} must be below timestep "
                             f"{timestep.tolist()[:3]} (DDIM steps go from noise to data)")
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=device)
    alpha_prod_t = _expand(alphas_cumprod.gather(0, timestep.clamp(min=0)), sample.ndim)
    alpha_prod_prev = torch.where(prev_timestep >= 0, alphas_cumprod.gather(0, prev_timestep.clamp(min=0)), final)
    alpha_prod_prev = _expand(alpha_prod_prev, sample.ndim)
    beta_prod_t = 1 - alpha_prod_t

    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        pred_x0 = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        pred_eps = model_output
    elif prediction_type == "v_prediction":
        pred_x0 = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        pred_eps = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    elif prediction_type == "sample":
        pred_x0 = model_output
        pred_eps = (sample - alpha_prod_t.sqrt() * pred_x0) / beta_prod_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}: use epsilon, v_prediction or sample")

    if scheduler.config.clip_sample:
        # x0_hat is clipped and epsilon kept as predicted, as DDIMScheduler.step does by default
        # (use_clipped_model_output=False), and as TRL and the SafeDiffusion-R1 reference do
        r = scheduler.config.clip_sample_range
        pred_x0 = pred_x0.clamp(-r, r)

    std_dev_t = eta * _ddim_variance(alpha_prod_t, alpha_prod_prev).sqrt()
    if prev_sample is not None and bool((std_dev_t == 0).any()):
        raise ValueError(
            "this DDIM step has zero variance (a final step whose previous alpha equals 1 with set_alpha_to_one=True, "
            "or equals its own at timestep 0), so a next latent has no log-probability; never train on it (the "
            "trainers skip it)"
        )
    direction = (1 - alpha_prod_prev - std_dev_t**2).clamp(min=0).sqrt() * pred_eps
    prev_mean = alpha_prod_prev.sqrt() * pred_x0 + direction

    if prev_sample is None and eta == 0:
        prev_sample = prev_mean  # deterministic: no noise is drawn, so the generators stay where they were
    elif prev_sample is None:
        if noise is None:
            if isinstance(generator, (list, tuple)):
                if len(generator) != batch:
                    raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
                noise = torch.stack(
                    [torch.randn(sample.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator]
                ).to(device)
            else:
                noise = torch.randn(sample.shape, generator=generator, device=device, dtype=torch.float32)
        prev_sample = prev_mean + std_dev_t * noise.to(device=device, dtype=torch.float32)
    prev_sample = prev_sample.float()

    if eta == 0:  # the deterministic DDIM step (outside a stochastic window): no density, reported as 0
        log_probs = torch.zeros(batch, device=device)
    else:
        log_probs = gaussian_log_prob(prev_sample.detach(), prev_mean, std_dev_t)
    return DDPOSchedulerOutput(
        latents=prev_sample, log_probs=log_probs, prev_sample_mean=prev_mean, std_dev_t=std_dev_t,
        pred_original_sample=pred_x0,
    )
