"""Windowed stochastic rollouts (Flow-GRPO-Fast, MixGRPO) and shared deterministic prefixes."""

import pytest
import torch
from datasets import Dataset
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from conftest import brightness_reward
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.sample_plan import prefix_groups, sde_window
from trl_safediffusion.schedulers import ddim_step_with_logprob
from trl_safediffusion.testing_utils import tiny_sd_pipeline

T = 6


def _config(tmp_path, **kw):
    base = dict(num_epochs=2, sample_num_steps=T, sample_batch_size=8, sample_num_batches_per_epoch=1,
                train_batch_size=8, num_generations=4, mixed_precision="no", train_learning_rate=1e-3,
                train_clip_range=0.2, save_freq=0, logdir=str(tmp_path / "logs"), sample_guidance_scale=3.0,
                train_timesteps_per_forward=4)
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


PROMPTS = Dataset.from_dict({"prompt": [f"a photo of object {i}" for i in range(4)]})


@pytest.fixture(scope="module")
def pipe():
    return DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=False)


def _inputs(pipe, groups=2, g=4, seed=0):
    cond = pipe.encode_conditioning([f"prompt {i}" for i in range(groups) for _ in range(g)])
    noise = torch.stack([torch.randn(pipe.latent_shape(), generator=torch.Generator().manual_seed(seed + i))
                         for i in range(groups) for _ in range(g)])
    gens = [torch.Generator().manual_seed(100 + i) for i in range(groups * g)]
    return cond, noise, gens


def test_window_covering_every_step_is_todays_rollout(pipe):
    cond, noise, _ = _inputs(pipe)
    full = pipe.rollout(cond, num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                        generators=[torch.Generator().manual_seed(100 + i) for i in range(8)])
    window = pipe.rollout(cond, num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                          generators=[torch.Generator().manual_seed(100 + i) for i in range(8)],
                          stochastic_steps=(0, T))
    assert torch.equal(full.latents, window.latents) and torch.equal(full.log_probs, window.log_probs)
    assert torch.equal(full.images, window.images) and window.first_step == 0


def test_steps_outside_the_window_are_deterministic_and_not_returned(pipe):
    cond, noise, _ = _inputs(pipe)
    outs = [pipe.rollout(cond, num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                         generators=[torch.Generator().manual_seed(seed + i) for i in range(8)],
                         stochastic_steps=(2, 4)) for seed in (100, 200)]
    out = outs[0]
    timesteps = pipe.set_timesteps(T)
    assert out.latents.shape[1] == 3 and out.log_probs.shape == (8, 2) and out.first_step == 2
    assert torch.equal(out.timesteps, timesteps[2:4])
    # the state entering the window is the deterministic DDIM (eta 0) prefix, whatever the step noise
    assert torch.equal(outs[0].latents[:, 0], outs[1].latents[:, 0])
    assert not torch.equal(outs[0].latents[:, 1], outs[1].latents[:, 1])
    x = noise.clone()
    with torch.no_grad():
        for t in timesteps[:2]:
            x = pipe.step_distribution(pipe.unet, x, t, cond, pipe.encode_conditioning([""] * 8), 3.0, 0.0).latents
    torch.testing.assert_close(out.latents[:, 0], x, rtol=0, atol=0)
    # after the window the steps are deterministic too: the images follow from the window's last latent by eta 0
    x = out.latents[:, -1]
    with torch.no_grad():
        for t in timesteps[4:]:
            x = pipe.step_distribution(pipe.unet, x, t, cond, pipe.encode_conditioning([""] * 8), 3.0, 0.0).latents
    torch.testing.assert_close(out.images, pipe.decode_latents(x), rtol=0, atol=0)


def test_shared_prefix_is_identical_to_per_sample_and_runs_the_model_on_fewer_rows(pipe):
    cond, noise, _ = _inputs(pipe)
    rows = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        kwargs = dict(num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                      stochastic_steps=(3, 5))
        per_sample = pipe.rollout(cond, generators=[torch.Generator().manual_seed(100 + i) for i in range(8)], **kwargs)
        rows_per_sample, rows[:] = sum(rows), []
        shared = pipe.rollout(cond, generators=[torch.Generator().manual_seed(100 + i) for i in range(8)],
                              prefix_rows=prefix_groups([f"prompt {i // 4}" for i in range(8)], [i // 4 for i in range(8)]),
                              **kwargs)
        rows_shared = sum(rows)
    finally:
        hook.remove()
    # the same computation on a smaller batch: equal up to the CPU kernels' batch-size-dependent rounding (measured
    # 1e-5 on latents of size ~5; the UNet alone differs by 9e-7 between a batch of 2 and of 8 on oneDNN)
    torch.testing.assert_close(shared.latents, per_sample.latents, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(shared.log_probs, per_sample.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.images, per_sample.images, rtol=1e-5, atol=1e-4)
    # sharing is exact in the sense that matters: every sample of a group enters the window from the same state
    assert all(torch.equal(shared.latents[i, 0], shared.latents[4 * (i // 4), 0]) for i in range(8))
    # 3 prefix steps x 2 CFG branches on 2 group rows instead of 8 sample rows; the other 3 steps on all 8
    assert rows_per_sample == 6 * 2 * 8 and rows_shared == 3 * 2 * 2 + 3 * 2 * 8


class _RowByRow(torch.nn.Module):
    """The UNet evaluated one row at a time: its output for a row no longer depends on the batch it came in."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        kwargs.pop("return_dict", None)
        self.calls.append(sample.shape[0])
        t = timestep.expand(sample.shape[0]) if torch.is_tensor(timestep) and timestep.ndim else timestep
        out = [self.unet(sample[i : i + 1], t[i : i + 1] if torch.is_tensor(t) and t.ndim else t,
                         encoder_hidden_states[i : i + 1], return_dict=False, **kwargs)[0]
               for i in range(sample.shape[0])]
        return UNet2DConditionOutput(sample=torch.cat(out))


def test_shared_prefix_is_bit_identical_with_a_batch_invariant_model(pipe):
    # The CPU kernels round differently for different batch sizes (the test above); with a model whose rows do not
    # depend on their batch, the shared prefix is the per-sample computation bit for bit.
    cond, noise, _ = _inputs(pipe)
    model = _RowByRow(pipe.unet)
    outs = []
    for prefix_rows in (None, prefix_groups([f"prompt {i // 4}" for i in range(8)], [i // 4 for i in range(8)])):
        model.calls.clear()
        with torch.no_grad():
            outs.append(pipe.rollout(cond, num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                                     generators=[torch.Generator().manual_seed(100 + i) for i in range(8)],
                                     stochastic_steps=(3, 5), prefix_rows=prefix_rows, model=model))
        outs[-1].rows = sum(model.calls)
    per_sample, shared = outs
    assert torch.equal(shared.latents, per_sample.latents) and torch.equal(shared.log_probs, per_sample.log_probs)
    assert torch.equal(shared.images, per_sample.images)
    assert per_sample.rows == 6 * 2 * 8 and shared.rows == 3 * 2 * 2 + 3 * 2 * 8


def test_shared_prefix_refuses_rows_with_different_noise(pipe):
    cond, noise, gens = _inputs(pipe)
    with pytest.raises(ValueError, match="prefix_rows"):
        pipe.rollout(cond, num_inference_steps=T, guidance_scale=3.0, initial_latents=noise, generators=gens,
                     stochastic_steps=(2, 4), prefix_rows=[0] * 8)


def test_trainer_stores_and_trains_only_window_steps(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=False)
    config = _config(tmp_path, sample_sde_window="fixed", sample_sde_window_size=2, sample_sde_window_start=1,
                     beta=0.1)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    batches, _, _, _ = trainer._rollout_epoch(0)
    s = batches[0]
    assert s["latents"].shape[1] == s["next_latents"].shape[1] == s["log_probs"].shape[1] == 2
    assert torch.equal(s["timesteps"][0], pipe.set_timesteps(T)[1:3])
    # the stored window steps are the policy's: the untrained policy scores them with ratio 1
    n = s["timesteps"].shape[0]
    for j in range(2):
        terms = trainer.compute_loss_terms(s["latents"][:, j], s["timesteps"][:, j], s["next_latents"][:, j],
                                           s["log_probs"][:, j], torch.ones(n), {"prompt_embeds": s["prompt_embeds"]})
        assert float(terms["loss"].detach()) == pytest.approx(-1.0, abs=1e-5)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert [r["sde_window_start"] for r in trainer.log_history if "reward_mean" in r] == [1, 1]
    recipe = trainer._recipe()  # the model card says which steps were stochastic
    assert (recipe["sample_sde_window"], recipe["sample_sde_window_size"]) == ("fixed", 2)


def test_window_schedules():
    assert sde_window("all", 0, 0, 0, epoch=3, trainable=9, seed=0) is None
    assert sde_window("fixed", 3, 2, 0, epoch=7, trainable=9, seed=0) == (2, 5)
    sliding = [sde_window("sliding", 3, 0, 2, epoch=e, trainable=9, seed=0) for e in range(16)]
    assert [w[0] for w in sliding] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 6]  # then held at the last start
    random = [sde_window("random", 3, 0, 0, epoch=e, trainable=9, seed=0) for e in range(40)]
    assert all(0 <= a and b == a + 3 <= 9 for a, b in random) and len({a for a, _ in random}) > 3
    assert random == [sde_window("random", 3, 0, 0, epoch=e, trainable=9, seed=0) for e in range(40)]  # every rank
    with pytest.raises(ValueError, match="sample_sde_window_start"):
        sde_window("fixed", 3, 7, 0, epoch=0, trainable=9, seed=0)


def test_window_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="sample_sde_window_size"):
        _config(tmp_path, sample_sde_window="fixed", sample_sde_window_size=0)
    with pytest.raises(ValueError, match="sample_sde_window_start"):
        _config(tmp_path, sample_sde_window="fixed", sample_sde_window_size=3, sample_sde_window_start=4)
    with pytest.raises(ValueError, match="sample_sde_window_shift_every"):
        _config(tmp_path, sample_sde_window="sliding", sample_sde_window_size=2)
    with pytest.raises(ValueError, match="sample_sde_window must be one of"):
        _config(tmp_path, sample_sde_window="half")
    with pytest.raises(ValueError, match="train_timestep_window"):
        _config(tmp_path, sample_sde_window="random", sample_sde_window_size=2, train_timestep_window=0.5)
    # inside the schedule but past the trainable steps (the last step is not trained): refused at construction
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=False)
    config = _config(tmp_path, sample_sde_window="fixed", sample_sde_window_size=2, sample_sde_window_start=T - 2)
    with pytest.raises(ValueError, match="trainable steps"):
        SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)


def test_deterministic_ddim_step_draws_no_noise_and_scores_nothing(pipe):
    pipe.set_timesteps(T)
    x = torch.randn(2, *pipe.latent_shape(), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    out = ddim_step_with_logprob(pipe.scheduler, torch.zeros_like(x), pipe.scheduler.timesteps[1], x, eta=0.0,
                                 generator=g)
    assert torch.equal(g.get_state(), state) and torch.equal(out.latents, out.prev_sample_mean)
    assert torch.equal(out.log_probs, torch.zeros(2))
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(pipe.scheduler, torch.zeros_like(x), pipe.scheduler.timesteps[1], x, eta=0.0,
                               prev_sample=x)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_families_window_and_shared_prefix(tmp_path, family):
    """The same windows for the flow-matching families: the flow ODE outside the window (no noise drawn), only the
    window stored and trained, and the shared prefix on fewer rows."""
    from trl_safediffusion import DefaultDDPOFluxPipeline, DefaultDDPOStableDiffusion3Pipeline
    from trl_safediffusion.testing_utils import tiny_flux_pipeline, tiny_sd3_pipeline

    if family == "sd3":
        flow = DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(seed=0), use_lora=True, max_sequence_length=8)
        scale = 3.0
    else:
        flow = DefaultDDPOFluxPipeline(tiny_flux_pipeline(seed=0), use_lora=True, max_sequence_length=8)
        scale = 1.0
    cond = flow.encode_conditioning([f"prompt {i // 2}" for i in range(4)])
    noise = torch.stack([torch.randn(flow.latent_shape(), generator=torch.Generator().manual_seed(i // 2))
                         for i in range(4)])
    outs = []
    for seed in (100, 200):
        with torch.no_grad():
            outs.append(flow.rollout(cond, num_inference_steps=T, guidance_scale=scale, eta=0.7, initial_latents=noise,
                                     generators=[torch.Generator().manual_seed(seed + i) for i in range(4)],
                                     stochastic_steps=(2, 4), prefix_rows=[0, 0, 1, 1]))
    out = outs[0]
    assert out.latents.shape[1] == 3 and out.log_probs.shape == (4, 2) and out.first_step == 2
    assert torch.equal(outs[0].latents[:, 0], outs[1].latents[:, 0])  # the deterministic prefix, shared per group
    assert torch.equal(out.latents[0, 0], out.latents[1, 0]) and not torch.equal(out.latents[0, 0], out.latents[2, 0])
    assert not torch.equal(outs[0].latents[:, 1], outs[1].latents[:, 1])  # the window's steps draw noise
    config = _config(tmp_path, sample_num_steps=T, sample_batch_size=4, train_batch_size=4, num_generations=2,
                     sample_eta=0.7, sample_guidance_scale=scale, sample_sde_window="fixed",
                     sample_sde_window_size=2, sample_sde_window_start=1, num_epochs=1)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, flow, train_dataset=PROMPTS)
    batches, _, _, _ = trainer._rollout_epoch(0)
    assert batches[0]["timesteps"].shape == (4, 2)
    torch.testing.assert_close(batches[0]["timesteps"][0], flow.set_timesteps(T)[1:3])


# ---------------------------------------------------------------------- a shorter deterministic tail (tail_steps)
def _ddim_jump_float64(scheduler, eps, x, t, s):
    """DDIM eq. 12 with eta 0 in float64, by hand: x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps (s < 0: the final alpha)."""
    a = scheduler.alphas_cumprod.double()
    a_t = a[int(t)]
    a_s = a[int(s)] if s >= 0 else torch.tensor(float(scheduler.final_alpha_cumprod), dtype=torch.float64)
    x, eps = x.double(), eps.double()
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def test_tail_steps_are_ddim_jumps_between_evenly_spaced_steps(pipe):
    cond, noise, _ = _inputs(pipe)
    negative = pipe.encode_conditioning([""] * 8)
    rows = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        out = pipe.rollout(cond, negative, num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                           generators=[torch.Generator().manual_seed(100 + i) for i in range(8)],
                           stochastic_steps=(0, 2), tail_steps=2)
    finally:
        hook.remove()
    # 2 window steps, then the 4 steps left taken as 2 (steps 2 -> 4 -> the end), each with 2 CFG branches of 8 rows
    assert rows == [16] * 4
    assert out.latents.shape[1] == 3 and out.log_probs.shape == (8, 2)
    timesteps = pipe.set_timesteps(T)
    step = pipe.scheduler.config.num_train_timesteps // T
    x = out.latents[:, -1]
    with torch.no_grad():
        for i, s in ((2, int(timesteps[4])), (4, int(timesteps[-1]) - step)):
            t = int(timesteps[i])
            uncond, c = pipe.unet(torch.cat([x, x]), t, torch.cat([negative["prompt_embeds"], cond["prompt_embeds"]]))\
                .sample.chunk(2)
            x = _ddim_jump_float64(pipe.scheduler, uncond + 3.0 * (c - uncond), x, t, s).float()
        expected = pipe.decode_latents(x)
    torch.testing.assert_close(out.images, expected, rtol=0, atol=1e-5)
    # the jump differs from the full deterministic tail (it skips steps), and stays close to it on this tiny model
    full = pipe.rollout(cond, negative, num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise,
                        generators=[torch.Generator().manual_seed(100 + i) for i in range(8)], stochastic_steps=(0, 2))
    assert torch.equal(full.latents, out.latents) and not torch.equal(full.images, out.images)


def test_tail_steps_of_one_schedule_step_are_the_deterministic_ddim_step(pipe):
    cond, noise, _ = _inputs(pipe)
    negative = pipe.encode_conditioning([""] * 8)
    timesteps = pipe.set_timesteps(T)
    with torch.no_grad():
        for i in range(T):
            jump = pipe.deterministic_step(pipe.unet, noise, i, i + 1, cond, negative, 3.0)
            ddim = pipe.step_distribution(pipe.unet, noise, timesteps[i], cond, negative, 3.0, eta=0.0).latents
            assert torch.equal(jump, ddim)
        # as many tail steps as steps left (or more) is the ordinary rollout
        kwargs = dict(num_inference_steps=T, guidance_scale=3.0, eta=1.0, initial_latents=noise, stochastic_steps=(0, 2))
        plain = pipe.rollout(cond, negative, generators=[torch.Generator().manual_seed(i) for i in range(8)], **kwargs)
        for k in (4, 9):
            same = pipe.rollout(cond, negative, generators=[torch.Generator().manual_seed(i) for i in range(8)],
                                tail_steps=k, **kwargs)
            assert torch.equal(same.images, plain.images)
        with pytest.raises(ValueError, match="index"):
            pipe.deterministic_step(pipe.unet, noise, 3, 3, cond, negative, 3.0)
        with pytest.raises(ValueError, match="tail_steps must be >= 1"):
            pipe.rollout(cond, negative, tail_steps=0, **{**kwargs, "stochastic_steps": (0, T)})


def test_flow_ode_jump_is_the_euler_step_over_the_skipped_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from trl_safediffusion.schedulers import flow_ode_jump

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(T)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    stock = scheduler.step(v, scheduler.timesteps[1], x).prev_sample  # the stock Euler step 1 -> 2
    torch.testing.assert_close(flow_ode_jump(scheduler, v, x, 1, 2), stock, rtol=0, atol=1e-6)
    sigmas = scheduler.sigmas.double()
    for i, j in ((0, 3), (2, T)):
        expected = x.double() + (sigmas[j] - sigmas[i]) * v.double()
        torch.testing.assert_close(flow_ode_jump(scheduler, v, x, i, j).double(), expected, rtol=0, atol=1e-6)
    assert float(sigmas[T]) == 0.0  # the end of the schedule is the clean latent
    with pytest.raises(ValueError, match="next_index"):
        flow_ode_jump(scheduler, v, x, 2, T + 1)


def test_tail_steps_in_the_trainer_and_flow_family(tmp_path):
    from trl_safediffusion import DefaultDDPOStableDiffusion3Pipeline
    from trl_safediffusion.testing_utils import tiny_sd3_pipeline

    flow = DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(seed=0), use_lora=True, max_sequence_length=8)
    config = _config(tmp_path, sample_batch_size=4, train_batch_size=4, num_generations=2, sample_eta=0.7,
                     sample_sde_window="fixed", sample_sde_window_size=2, sample_tail_steps=1, num_epochs=1)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, flow, train_dataset=PROMPTS)
    rows = []
    hook = flow.model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["hidden_states"].shape[0]),
                                                with_kwargs=True)
    try:
        batches, _, _, _ = trainer._rollout_epoch(0)
    finally:
        hook.remove()
    assert batches[0]["timesteps"].shape == (4, 2)
    assert len(rows) == 2 + 1  # two window steps and one step from the window's end to sigma 0 (not 4)
    before = {k: v.clone() for k, v in flow.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in flow.model.state_dict().items())
    assert trainer._recipe()["sample_tail_steps"] == 1


def test_tail_steps_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="sample_tail_steps=2 shortens .* set sample_sde_window"):
        _config(tmp_path, sample_tail_steps=2)
    with pytest.raises(ValueError, match="sample_tail_steps must be an integer >= 0"):
        _config(tmp_path, sample_sde_window="fixed", sample_sde_window_size=2, sample_tail_steps=-1)
