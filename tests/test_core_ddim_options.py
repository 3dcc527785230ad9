"""The DDIM step's mean equals diffusers' `DDIMScheduler.step` for every scheduler option it accepts, and a
zero-variance step (the last one with `set_alpha_to_one=True`) is never trained on."""

import itertools

import pytest
import torch
from diffusers import DDIMScheduler

from conftest import brightness_reward
from trl_safediffusion import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from trl_safediffusion.schedulers import ddim_step_std, ddim_step_with_logprob
from trl_safediffusion.testing_utils import tiny_sd_pipeline

OPTIONS = [
    dict(prediction_type=p, clip_sample=c, set_alpha_to_one=a, timestep_spacing=sp, steps_offset=o)
    for p, c, a, sp, o in itertools.product(
        ["epsilon", "v_prediction", "sample"], [False, True], [False, True], ["leading", "trailing", "linspace"], [0, 1]
    )
] + [dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=c,
          set_alpha_to_one=a) for c in (False, True) for a in (False, True)]


def _name(option):
    return ",".join(f"{k}={v}" for k, v in option.items())


@pytest.mark.parametrize("option", OPTIONS, ids=_name)
def test_step_mean_and_x0_equal_diffusers(option):
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample_range=0.5, **option)
    scheduler.set_timesteps(7)
    g = torch.Generator().manual_seed(0)
    for t in scheduler.timesteps:
        x = 2 * torch.randn(2, 4, 8, 8, generator=g)  # large enough that clip_sample_range=0.5 clips x0_hat
        model_output = torch.randn(2, 4, 8, 8, generator=g)
        zero = torch.zeros_like(x)
        ours = ddim_step_with_logprob(scheduler, model_output, int(t), x, eta=1.0, noise=zero)
        theirs = scheduler.step(model_output, int(t), x, eta=1.0, variance_noise=zero)
        if bool(torch.isnan(theirs.prev_sample).any()):
            # zero terminal SNR at eta 1: 1 - a_prev - sigma^2 is 0 in exact arithmetic and diffusers' float32 rounding
            # takes the square root of a tiny negative number; ours clamps it, so the direction term is 0
            assert option.get("rescale_betas_zero_snr") and float(scheduler.alphas_cumprod[int(t)]) == 0.0
            prev = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            expected = scheduler.alphas_cumprod[prev].double().sqrt() * theirs.pred_original_sample.double()
            torch.testing.assert_close(ours.prev_sample_mean.double(), expected, rtol=1e-5, atol=1e-5)
            continue
        torch.testing.assert_close(ours.prev_sample_mean, theirs.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.latents, theirs.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, rtol=1e-5, atol=1e-5)
        # the std is DDIM's sigma_t = eta * sqrt(variance), diffusers' own variance for this step
        prev = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        expected_std = float(scheduler._get_variance(int(t), prev)) ** 0.5
        assert float(ours.std_dev_t.reshape(-1)[0]) == pytest.approx(expected_std, rel=1e-5, abs=1e-7)


def test_clip_sample_keeps_the_predicted_epsilon():
    """Clipping moves x0_hat only: the direction term uses the model's epsilon, as diffusers, TRL and the reference."""
    scheduler = DDIMScheduler(clip_sample=True, clip_sample_range=0.1, set_alpha_to_one=False)
    scheduler.set_timesteps(5)
    x = torch.full((1, 1, 2, 2), 3.0)
    eps = torch.full((1, 1, 2, 2), 0.5)
    t = int(scheduler.timesteps[1])
    out = ddim_step_with_logprob(scheduler, eps, t, x, eta=0.5, noise=torch.zeros_like(x))
    a_t = float(scheduler.alphas_cumprod[t])
    a_prev = float(scheduler.alphas_cumprod[t - 200])
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    x0 = max(-0.1, min(0.1, (3.0 - (1 - a_t) ** 0.5 * 0.5) / a_t**0.5))
    mean = a_prev**0.5 * x0 + (1 - a_prev - 0.25 * var) ** 0.5 * 0.5  # by hand, float64
    torch.testing.assert_close(out.prev_sample_mean, torch.full_like(x, mean), rtol=1e-6, atol=1e-6)


def test_zero_variance_step_std_and_log_prob_error():
    scheduler = DDIMScheduler(set_alpha_to_one=True)
    std = ddim_step_std(scheduler, 5, eta=1.0)
    assert std.shape == (5,) and float(std[-1]) == 0.0 and bool((std[:-1] > 0).all())
    # SD's schedulers (steps_offset=1, final alpha = alphas_cumprod[0]): every step has a variance
    assert bool((ddim_step_std(DDIMScheduler(set_alpha_to_one=False, steps_offset=1), 5, 1.0) > 0).all())
    # a last timestep of 0 with final alpha alphas_cumprod[0] is deterministic too
    assert float(ddim_step_std(DDIMScheduler(set_alpha_to_one=False, steps_offset=0), 5, 1.0)[-1]) == 0.0
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="zero variance"):
        ddim_step_with_logprob(scheduler, x, int(scheduler.timesteps[-1]), x, eta=1.0, prev_sample=x)


def _trainer(tmp_path, set_alpha_to_one, steps=4):
    base = tiny_sd_pipeline(seed=0)
    base.scheduler = DDIMScheduler.from_config(base.scheduler.config, set_alpha_to_one=set_alpha_to_one)
    pipe = DefaultDDPOStableDiffusionPipeline(base, use_lora=False)
    config = DDPOConfig(num_epochs=2, sample_num_steps=steps, sample_batch_size=2, sample_num_batches_per_epoch=1,
                        train_batch_size=2, train_timestep_fraction=1.0, mixed_precision="no", save_freq=0,
                        train_learning_rate=1e-3, logdir=str(tmp_path))
    return DDPOTrainer(config, brightness_reward, lambda: ("a cat", {}), pipe)


def test_ddpo_never_trains_on_the_zero_variance_last_step(tmp_path):
    trainer = _trainer(tmp_path, set_alpha_to_one=True)
    assert trainer._trainable_timestep_count() == 3 and trainer.num_train_timesteps == 3
    before = {n: p.detach().clone() for n, p in trainer.sd_pipeline.unet.named_parameters()}
    trainer.train()
    after = dict(trainer.sd_pipeline.unet.named_parameters())
    assert all(bool(torch.isfinite(p).all()) for p in after.values())
    assert any(not torch.equal(before[n], p.detach()) for n, p in after.items())
    losses = [r["train/loss"] for r in trainer.log_history if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    # with a final alpha below 1 every step has a variance and all of them are trained
    assert _trainer(tmp_path / "b", set_alpha_to_one=False)._trainable_timestep_count() == 4


def test_one_step_zero_variance_schedule_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="set_alpha_to_one=False"):
        _trainer(tmp_path, set_alpha_to_one=True, steps=1)
