"""A flow-matching step as a Gaussian policy: Flow-GRPO's SDE with the marginals of the Euler ODE.

Rectified-flow models (SD3, SD3.5, Flux) predict a velocity v at x_t = (1 - t) x_0 + t x_1, and diffusers'
`FlowMatchEulerDiscreteScheduler` takes the deterministic Euler step x_next = x_t + v dt, with t the scheduler's sigma
going from 1 to 0 and dt = sigma_next - sigma < 0. Flow-GRPO (Liu et al. 2025, arXiv 2505.05470, eq. 8-9) replaces it
in rollouts by the reverse-time SDE with the same marginals, discretised with Euler-Maruyama:

    x_next ~ N(mean, std^2),  mean = x_t + [v + sigma_t^2 / (2 t) * (x_t + (1 - t) v)] dt,  std = sigma_t sqrt(-dt),
    sigma_t = a sqrt(t / (1 - t)),

a being the noise level (Flow-GRPO's default 0.7). With a = 0 the step is the Euler step again.
"""

from __future__ import annotations

import torch

from .ddim_with_logprob import DDPOSchedulerOutput, gaussian_log_prob

FLOW_GRPO_NOISE_LEVEL = 0.7


def _check_scheduler(scheduler):
    if getattr(scheduler, "num_inference_steps", None) is None or getattr(scheduler, "sigmas", None) is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) before flow_sde_step_with_logprob")
    if len(scheduler.sigmas) != len(scheduler.timesteps) + 1:
        raise ValueError(
            f"scheduler.sigmas has {len(scheduler.sigmas)} values for {len(scheduler.timesteps)} timesteps; expected "
            "one more (the terminal sigma 0 that FlowMatchEulerDiscreteScheduler.set_timesteps appends)"
        )
    if getattr(scheduler.config, "invert_sigmas", False):
        raise ValueError("invert_sigmas=True schedules are not supported by the flow SDE step; use invert_sigmas=False")


def _check_noise_level(noise_level: float):
    if not noise_level >= 0:
        raise ValueError(f"noise_level must be >= 0 (the SDE noise level a of Flow-GRPO, 0 for the ODE), got "
                         f"{noise_level}")


def _step_coefficients(sigmas: torch.Tensor, index: torch.Tensor, noise_level: float):
    """`(t, dt, sigma_t, std)` of the steps at `index` (float32 tensors of the index's shape) of the sigma schedule
    `sigmas` (T + 1 values, the last one 0)."""
    sigmas = sigmas.to(dtype=torch.float32)
    t = sigmas[index]
    dt = sigmas[index + 1] - t
    # At t = 1, sqrt(t / (1 - t)) is infinite. Flow-GRPO evaluates the denominator at sigma_max = sigmas[1] instead
    # (the numerator stays t = 1): `std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma)))
    # * noise_level` with `sigma_max = self.sigmas[1].item()`, yifan123/flow_grpo,
    # flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (commit 54809b5). We do the same, for t >= 1.
    sigma_max = sigmas[1] if len(sigmas) > 1 else sigmas.new_zeros(())
    denominator_t = torch.where(t >= 1, sigma_max.expand_as(t), t)
    sigma_t = noise_level * torch.sqrt(t / (1 - denominator_t))
    std = sigma_t * torch.sqrt(-dt)
    return t, dt, sigma_t, std


def _step_indices(scheduler, timestep, batch: int, device) -> torch.Tensor:
    """(B,) index of each sample's `timestep` (a scalar or (B,)) in `scheduler.timesteps`."""
    schedule = scheduler.timesteps.to(device=device, dtype=torch.float32)
    timestep = torch.as_tensor(timestep).to(device=device, dtype=torch.float32).reshape(-1)
    if timestep.numel() == 1:
        timestep = timestep.expand(batch)
    elif timestep.numel() != batch:
        raise ValueError(f"timestep must be a scalar or one per sample ({batch}), got {timestep.numel()} values")
    gap, index = (timestep[:, None] - schedule[None, :]).abs().min(dim=1)
    tolerance = 1e-4 * float(scheduler.config.num_train_timesteps)
    if bool((gap > tolerance).any()):
        bad = timestep[gap > tolerance][:3].tolist()
        raise ValueError(
            f"timestep {bad} is not one of the scheduler's timesteps; call scheduler.set_timesteps with the rollout's "
            "num_inference_steps and pass values of scheduler.timesteps"
        )
    return index


def flow_sde_step_std(scheduler, num_inference_steps: int, noise_level: float = FLOW_GRPO_NOISE_LEVEL,
                      **set_timesteps_kwargs) -> torch.Tensor:
    """Standard deviation sigma_t sqrt(-dt) of each of the `num_inference_steps` flow SDE steps of `scheduler`'s
    schedule, (T,) float32. Every step has std > 0 when `noise_level > 0` (the last one goes to sigma 0 with
    dt = -sigma_last), so every step has a log-probability; all are 0 with `noise_level=0` (the ODE).

    Calls `scheduler.set_timesteps(num_inference_steps, **set_timesteps_kwargs)` (e.g. `mu=` for a scheduler with
    `use_dynamic_shifting`).
    """
    _check_noise_level(noise_level)
    scheduler.set_timesteps(num_inference_steps, **set_timesteps_kwargs)
    _check_scheduler(scheduler)
    sigmas = scheduler.sigmas.to("cpu")
    return _step_coefficients(sigmas, torch.arange(len(scheduler.timesteps)), noise_level)[3]


def _standard_normal(shape, generator, device) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack(
            [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator]
        ).to(device)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


def flow_sde_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep,
    sample: torch.Tensor,
    noise_level: float = FLOW_GRPO_NOISE_LEVEL,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> DDPOSchedulerOutput:
    r"""
    One flow SDE step of `scheduler` (a diffusers `FlowMatchEulerDiscreteScheduler` after `set_timesteps`) with the
    log-probability of the next latent (Flow-GRPO, arXiv 2505.05470; see the module docstring for the step).

    Computed in float32 whatever the dtype of the inputs. Unlike the scheduler's own `step`, it keeps no step index:
    each sample's sigma is looked up from its timestep, so one batch may hold steps of different timesteps.

    Args:
        scheduler (`FlowMatchEulerDiscreteScheduler`): supplies `timesteps` and `sigmas` (T + 1 values, the last 0).
        model_output (`torch.Tensor`): the predicted velocity v (B, C, h, w).
        timestep (`torch.Tensor` or `float`): the current timestep, one of `scheduler.timesteps` (sigma * 1000), a
            scalar or one per sample (B,).
        sample (`torch.Tensor`): the current latent x_t (B, C, h, w).
        noise_level (`float`, *optional*, defaults to `0.7`): the SDE noise level a, >= 0. With 0 the step is the
            deterministic Euler step (the mean equals `scheduler.step(...).prev_sample`), whose next latent has no
            density: sampling then returns log-probabilities 0, and asking for the log-probability of a given
            `prev_sample` is a `ValueError`.
        prev_sample (`torch.Tensor`, *optional*): if given, the log-probability of this next latent is returned
            (training); otherwise the next latent is drawn (sampling).
        generator (`torch.Generator` or list of them, *optional*): noise source when sampling; a list gives one
            generator per sample so each sample's noise is independent of the batch it is in.

    Returns:
        [`DDPOSchedulerOutput`]: `latents` (the next latent), `log_probs` (B,) (the Gaussian log-density averaged over
        the latent dimensions), `prev_sample_mean`, `std_dev_t` (the Gaussian std sigma_t sqrt(-dt), (B, 1, 1, 1)) and
        `pred_original_sample` (x0_hat = x_t - t v).
    """
    _check_noise_level(noise_level)
    _check_scheduler(scheduler)
    model_output = model_output.float()
    sample = sample.float()
    batch, device = sample.shape[0], sample.device
    index = _step_indices(scheduler, timestep, batch, device)
    t, dt, sigma_t, std = _step_coefficients(scheduler.sigmas.to(device), index, noise_level)
    shape = (batch, *([1] * (sample.ndim - 1)))
    t, dt, sigma_t, std = (x.reshape(shape) for x in (t, dt, sigma_t, std))

    prev_mean = sample + (model_output + sigma_t**2 / (2 * t) * (sample + (1 - t) * model_output)) * dt
    pred_x0 = sample - t * model_output
    deterministic = std == 0
    if prev_sample is not None:
        if bool(deterministic.any()):
            raise ValueError(
                "noise_level=0 makes the flow step deterministic (the Euler ODE step), so a next latent has no "
                "log-probability; use noise_level > 0 for steps that are trained on"
            )
        prev_sample = prev_sample.float()
        log_probs = gaussian_log_prob(prev_sample.detach(), prev_mean, std)
    elif noise_level == 0:  # the ODE step (outside a stochastic window): no noise is drawn, the generators stay put
        prev_sample = prev_mean
        log_probs = torch.zeros(batch, device=device)
    else:
        noise = _standard_normal(sample.shape, generator, device)
        prev_sample = prev_mean + std * noise
        safe_std = torch.where(deterministic, torch.ones_like(std), std)
        log_probs = gaussian_log_prob(prev_sample.detach(), prev_mean, safe_std)
        log_probs = torch.where(deterministic.reshape(-1), torch.zeros_like(log_probs), log_probs)
    return DDPOSchedulerOutput(
        latents=prev_sample, log_probs=log_probs, prev_sample_mean=prev_mean, std_dev_t=std,
        pred_original_sample=pred_x0,
    )


def flow_ode_jump(scheduler, model_output: torch.Tensor, sample: torch.Tensor, index: int, next_index: int) -> torch.Tensor:
    """The Euler step of the flow ODE, x + (sigma_next - sigma) v, from the sigma of step `index` of `scheduler`'s
    schedule to that of step `next_index` (`index < next_index <= T`; `scheduler.sigmas[T]` is the terminal 0),
    skipping the steps between; float32. With `next_index = index + 1` it is the scheduler's own Euler step."""
    _check_scheduler(scheduler)
    steps = len(scheduler.timesteps)
    if not 0 <= index < next_index <= steps:
        raise ValueError(f"flow_ode_jump needs 0 <= index < next_index <= {steps} (the number of steps), got "
                         f"index={index}, next_index={next_index}")
    sigmas = scheduler.sigmas.to(device=sample.device, dtype=torch.float32)
    return sample.float() + (sigmas[next_index] - sigmas[index]) * model_output.float()
