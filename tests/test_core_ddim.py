"""The DDIM step with log-probability against independent float64 computations and against diffusers."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from trl_safediffusion.schedulers import ddim_step_with_logprob


def make_scheduler(prediction_type="epsilon", steps=10):
    s = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, prediction_type=prediction_type, steps_offset=1,
    )
    s.set_timesteps(steps)
    return s


def reference_step_f64(s, model_output, t, x, eta, x_prev):
    """DDIM eq. 12/16 written out in float64 numpy for one sample."""
    T, n = s.config.num_train_timesteps, s.num_inference_steps
    betas = np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    a_t = ac[t]
    a_prev = ac[t - T // n] if t - T // n >= 0 else ac[0]  # set_alpha_to_one=False -> final alpha = ac[0]
    m = model_output.astype(np.float64)
    x = x.astype(np.float64)
    if s.config.prediction_type == "epsilon":
        eps = m
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    else:  # v_prediction
        x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * m
        eps = math.sqrt(a_t) * m + math.sqrt(1 - a_t) * x
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * math.sqrt(var)
    mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - std**2) * eps
    d = x_prev.astype(np.float64) - mean
    logp = -(d**2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.mean(), mean, std


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_log_prob_matches_float64_gaussian(prediction_type, eta):
    s = make_scheduler(prediction_type)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    out_model = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([901, 501, 1])  # includes the last step, whose previous alpha is the final alpha
    x_prev = torch.randn(3, 4, 8, 8, generator=g)
    res = ddim_step_with_logprob(s, out_model, t, x, eta=eta, prev_sample=x_prev)
    for i in range(3):
        logp, mean, std = reference_step_f64(s, out_model[i].numpy(), int(t[i]), x[i].numpy(), eta, x_prev[i].numpy())
        assert res.log_probs[i].item() == pytest.approx(logp, rel=1e-5, abs=1e-4)
        np.testing.assert_allclose(res.prev_sample_mean[i].numpy(), mean, rtol=1e-4, atol=1e-5)
        assert res.std_dev_t[i].item() == pytest.approx(std, rel=1e-5)


def test_sampled_step_equals_diffusers_ddim_step():
    """With the same noise, our sample equals diffusers' DDIMScheduler.step (an independent implementation)."""
    s = make_scheduler("epsilon")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    t = int(s.timesteps[3])
    ours = ddim_step_with_logprob(s, eps, t, x, eta=1.0, noise=noise)
    theirs = s.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours.latents, theirs, rtol=1e-5, atol=1e-5)
    # and the log-prob of the sampled latent is that of the drawn standard normal noise
    expected = (-(noise.double() ** 2) / 2 - torch.log(ours.std_dev_t.double()) - 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(ours.log_probs.double(), expected.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)


def test_log_prob_is_float32_under_bf16_inputs():
    s = make_scheduler()
    x = torch.randn(2, 4, 8, 8).bfloat16()
    eps = torch.randn(2, 4, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ddim_step_with_logprob(s, eps, 501, x, eta=1.0)
    assert out.log_probs.dtype == torch.float32
    assert out.latents.dtype == torch.float32
    again = ddim_step_with_logprob(s, eps.float(), 501, x.float(), eta=1.0, prev_sample=out.latents)
    torch.testing.assert_close(again.log_probs, out.log_probs)


def test_eta_zero_and_unset_scheduler_rejected():
    s = make_scheduler()
    x = torch.randn(1, 4, 8, 8)
    # eta = 0 has no log-probability: scoring a next latent is refused (sampling the deterministic step is allowed,
    # tests/test_core_sde_window.py), and a negative eta is refused outright
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(s, x, 501, x, eta=0.0, prev_sample=x)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(s, x, 501, x, eta=-0.5)
    fresh = DDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_step_with_logprob(fresh, x, 501, x, eta=1.0)
