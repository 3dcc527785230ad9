"""The flow-matching SDE step (Flow-GRPO) as a Gaussian policy: log-density, ODE limit, sampling, dtypes."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from trl_safediffusion.schedulers import flow_sde_step_std, flow_sde_step_with_logprob

STEPS = 6
SHAPE = (3, 4, 5, 5)


def _scheduler(steps=STEPS, shift=3.0):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


def _reference_step(scheduler, v, t_index, x, a):
    """mean and std of the step at schedule position `t_index`, from the formula, in float64."""
    sigmas = scheduler.sigmas.double()
    t, t_next = sigmas[t_index], sigmas[t_index + 1]
    dt = t_next - t
    ratio_t = sigmas[1] if t == 1 else t  # Flow-GRPO's convention at t = 1 (denominator at sigmas[1])
    sigma_t = a * math.sqrt(float(t) / (1 - float(ratio_t)))
    v, x = v.double(), x.double()
    mean = x + (v + sigma_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
    return mean, sigma_t * math.sqrt(float(-dt))


@pytest.mark.parametrize("index", [0, 1, 3, STEPS - 1])
def test_log_prob_is_the_gaussian_density(index):
    scheduler = _scheduler()
    g = torch.Generator().manual_seed(index)
    x, v, nxt = (torch.randn(SHAPE, generator=g) for _ in range(3))
    t = scheduler.timesteps[index]
    out = flow_sde_step_with_logprob(scheduler, v, t, x, noise_level=0.7, prev_sample=nxt)
    mean, std = _reference_step(scheduler, v, index, x, 0.7)
    dens = (-((nxt.double() - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(out.log_probs.double(), dens.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.prev_sample_mean.double(), mean, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.std_dev_t.double(), torch.full((SHAPE[0], 1, 1, 1), std, dtype=torch.float64))
    torch.testing.assert_close(out.pred_original_sample, x - scheduler.sigmas[index] * v)
    assert torch.isfinite(out.log_probs).all()
    assert torch.equal(out.latents, nxt)
    std_all = flow_sde_step_std(_scheduler(), STEPS, 0.7)
    assert std_all.shape == (STEPS,) and bool((std_all > 0).all())
    assert float(std_all[index]) == pytest.approx(std, rel=1e-5)


def test_first_step_is_finite():
    scheduler = _scheduler()
    assert float(scheduler.sigmas[0]) == 1.0
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    out = flow_sde_step_with_logprob(scheduler, v, scheduler.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.latents).all() and torch.isfinite(out.log_probs).all()


def _stock_step(steps, v, t, x):
    stock = _scheduler(steps)  # a fresh step index: the stock step finds it from t
    return stock.step(v, t, x).prev_sample


def test_noise_level_zero_is_the_stock_euler_step():
    scheduler = _scheduler()
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    for t in scheduler.timesteps:
        out = flow_sde_step_with_logprob(scheduler, v, t, x, noise_level=0.0)
        torch.testing.assert_close(out.prev_sample_mean, _stock_step(STEPS, v, t, x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.latents, out.prev_sample_mean)
        assert torch.equal(out.log_probs, torch.zeros(SHAPE[0]))  # no density: 0, never NaN
    # one timestep per sample: each row is the stock step at its own timestep
    ts = scheduler.timesteps[torch.tensor([0, 2, STEPS - 1])]
    out = flow_sde_step_with_logprob(scheduler, v, ts, x, noise_level=0.0)
    for i, t in enumerate(ts):
        torch.testing.assert_close(out.prev_sample_mean[i], _stock_step(STEPS, v[i:i + 1], t, x[i:i + 1])[0],
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="noise_level=0"):
        flow_sde_step_with_logprob(scheduler, v, ts, x, noise_level=0.0, prev_sample=x)
    assert bool((flow_sde_step_std(_scheduler(), STEPS, 0.0) == 0).all())


def test_per_sample_timesteps_match_scalar_steps():
    scheduler = _scheduler()
    x, v, nxt = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    ts = scheduler.timesteps[torch.tensor([1, 4, 0])]
    batched = flow_sde_step_with_logprob(scheduler, v, ts, x, prev_sample=nxt)
    for i, t in enumerate(ts):
        one = flow_sde_step_with_logprob(scheduler, v[i:i + 1], t, x[i:i + 1], prev_sample=nxt[i:i + 1])
        torch.testing.assert_close(batched.log_probs[i:i + 1], one.log_probs)
        torch.testing.assert_close(batched.prev_sample_mean[i:i + 1], one.prev_sample_mean)


def test_sampling_is_reproducible_and_has_the_step_moments():
    scheduler = _scheduler()
    x, v = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    t = scheduler.timesteps[2]

    def draw(seed):
        return flow_sde_step_with_logprob(scheduler, v, t, x, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3).latents, draw(3).latents)
    assert not torch.equal(draw(3).latents, draw(4).latents)
    n = 4000
    xs, vs = x.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)
    out = flow_sde_step_with_logprob(scheduler, vs, t, xs, generator=torch.Generator().manual_seed(0))
    mean, std = out.prev_sample_mean[0], float(out.std_dev_t[0])
    torch.testing.assert_close(out.latents.mean(0), mean, atol=4 * std / math.sqrt(n) * 1.5, rtol=0)
    assert float(out.latents.std(0).mean()) == pytest.approx(std, rel=0.03)
    # per-sample generators: a sample's draw does not depend on its batch
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    pair = flow_sde_step_with_logprob(scheduler, v.expand(2, -1, -1, -1), t, x.expand(2, -1, -1, -1), generator=gens)
    alone = flow_sde_step_with_logprob(scheduler, v, t, x, generator=[torch.Generator().manual_seed(8)])
    torch.testing.assert_close(pair.latents[1:], alone.latents)


def test_negative_noise_level_and_bad_timestep_raise():
    scheduler = _scheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="noise_level"):
        flow_sde_step_with_logprob(scheduler, x, scheduler.timesteps[0], x, noise_level=-0.1)
    with pytest.raises(ValueError, match="noise_level"):
        flow_sde_step_std(scheduler, STEPS, -1.0)
    with pytest.raises(ValueError, match="timestep"):
        flow_sde_step_with_logprob(scheduler, x, 123.456, x)
    with pytest.raises(ValueError, match="set_timesteps"):
        flow_sde_step_with_logprob(FlowMatchEulerDiscreteScheduler(), x, 1000.0, x)


def test_bf16_inputs_give_float32_outputs():
    scheduler = _scheduler()
    x, v, nxt = (torch.randn(SHAPE).to(torch.bfloat16) for _ in range(3))
    t = scheduler.timesteps[1]
    out = flow_sde_step_with_logprob(scheduler, v, t, x, prev_sample=nxt)
    for tensor in (out.latents, out.log_probs, out.prev_sample_mean, out.std_dev_t, out.pred_original_sample):
        assert tensor.dtype == torch.float32
    ref = flow_sde_step_with_logprob(scheduler, v.float(), t, x.float(), prev_sample=nxt.float())
    torch.testing.assert_close(out.log_probs, ref.log_probs)
    sampled = flow_sde_step_with_logprob(scheduler, v, t, x, generator=torch.Generator().manual_seed(0))
    assert sampled.latents.dtype == torch.float32
