"""End-to-end training on a tiny pipeline built from configs: parameters, resume, rewards, defects of TRL v0.23.1."""

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import (
    DDPOConfig,
    DDPOTrainer,
    DefaultDDPOStableDiffusionPipeline,
    RewardFunctionError,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
)
from trl_safediffusion.testing_utils import tiny_sd_pipeline

PROMPTS = [f"a photo of object {i}" for i in range(8)]


def grpo_config(tmp_path, **kw):
    base = dict(
        num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=2, train_batch_size=4,
        num_generations=4, mixed_precision="no", train_learning_rate=1e-3, train_clip_range=0.2, save_freq=0,
        logdir=str(tmp_path / "logs"), train_timesteps_per_forward=3,
    )
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


def ddpo_config(tmp_path, **kw):
    base = dict(
        num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=2,
        mixed_precision="no", train_learning_rate=1e-3, save_freq=0, logdir=str(tmp_path / "logs"),
    )
    base.update(kw)
    return DDPOConfig(**base)


def prompt_dataset(labels=True):
    data = {"prompt": PROMPTS}
    if labels:
        data["unsafe"] = [i % 2 == 0 for i in range(len(PROMPTS))]
    return Dataset.from_dict(data)


def snapshot(module):
    return {n: p.detach().clone().float() for n, p in module.named_parameters()}


def test_lora_training_changes_only_lora_parameters(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True, lora_rank=4)
    unet0, vae0, te0 = snapshot(pipe.unet), snapshot(pipe.vae), snapshot(pipe.text_encoder)
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path), brightness_reward, pipe, train_dataset=prompt_dataset())
    trainer.train()
    changed_lora = [n for n, p in pipe.unet.named_parameters() if "lora_" in n and not torch.equal(p.float(), unet0[n])]
    assert len(changed_lora) > 0
    for n, p in pipe.unet.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.float(), unet0[n]), f"frozen UNet weight {n} changed"
    for name, module, before in (("vae", pipe.vae, vae0), ("text_encoder", pipe.text_encoder, te0)):
        for n, p in module.named_parameters():
            assert torch.equal(p.float(), before[n]), f"frozen {name} weight {n} changed"
    logs = [r for r in trainer.log_history if "reward_mean" in r]
    assert [r["epoch"] for r in logs] == [0, 1]
    # reward statistics split by the dataset's label column, for the labels sampled in that epoch
    assert all(any(k.startswith("reward/unsafe=") and k.endswith("/mean") for k in r) for r in logs)
    assert any("train/approx_kl" in r and "train/clipfrac" in r for r in trainer.log_history)


def test_full_finetune_changes_unet_only(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    unet0, vae0 = snapshot(pipe.unet), snapshot(pipe.vae)
    trainer = DDPOTrainer(ddpo_config(tmp_path), brightness_reward, lambda: ("a photo of a cat", {"i": 1}), pipe)
    trainer.train()
    changed = [n for n, p in pipe.unet.named_parameters() if not torch.equal(p.float(), unet0[n])]
    assert len(changed) > len(unet0) // 2
    assert all(torch.equal(p.float(), vae0[n]) for n, p in pipe.vae.named_parameters())


def test_shared_initial_noise_within_groups(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path), brightness_reward, pipe, train_dataset=prompt_dataset())
    plan = trainer._sample_plan(0)
    assert len(plan.prompts) == 8 and len(set(plan.prompts[:4])) == 1 and len(set(plan.prompts[4:])) == 1
    assert len(set(plan.noise_seeds[:4])) == 1 and plan.noise_seeds[0] != plan.noise_seeds[4]
    assert len(set(plan.step_seeds)) == 8  # the DDIM step noise still differs inside a group
    samples, data, _, _ = trainer._rollout_epoch(0)
    lat0 = samples[0]["latents"][:, 0]  # (B, C, h, w) initial noise of the first batch (one group)
    assert torch.equal(lat0[0], lat0[3]) and not torch.equal(samples[0]["next_latents"][0, -1], samples[0]["next_latents"][1, -1])


def _trajectory_log_probs(trainer, samples):
    """Sum over steps of log p(x_{t-1} | x_t) of stored trajectories under the trainer's current UNet: (B,)."""
    total = 0.0
    with torch.no_grad():
        for t in range(samples["timesteps"].shape[1]):
            cond, neg = trainer._training_conditioning({"prompt_embeds": samples["prompt_embeds"]})
            out = trainer.sd_pipeline.step_distribution(
                trainer.unet, samples["latents"][:, t], samples["timesteps"][:, t], cond, neg,
                trainer.config.sample_guidance_scale, trainer.config.sample_eta,
                next_latents=samples["next_latents"][:, t],
            )
            total = total + out.log_probs
    return total


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_update_raises_log_prob_of_positive_advantage_trajectories(tmp_path, guidance):
    """The policy-gradient direction and the sample/advantage correspondence: after one small update with advantages
    +1 / -1 on alternate samples, the +1 trajectories gained log-probability relative to the -1 ones."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    config = grpo_config(tmp_path, sample_num_steps=4, sample_batch_size=8, sample_num_batches_per_epoch=1,
                         train_batch_size=8, train_learning_rate=1e-5, sample_guidance_scale=guidance)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset(False))
    batches, _, _, _ = trainer._rollout_epoch(0)
    samples = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    before = _trajectory_log_probs(trainer, samples)
    torch.testing.assert_close(before, samples["log_probs"].sum(1), rtol=0, atol=1e-4)  # on-policy: ratio 1
    advantages = torch.tensor([1.0, -1.0] * 4)
    trainer._train_on_samples({**samples, "advantages": advantages}, epoch=0, global_step=0)
    delta = _trajectory_log_probs(trainer, samples) - before
    assert delta[advantages > 0].mean() > delta[advantages < 0].mean(), delta


def test_guidance_one_trains_without_the_unconditional_half(tmp_path):
    """With sample_guidance_scale 1 the rollout samples without CFG, so training must not run the UNet on 2N inputs
    (uncond + 1 * (cond - uncond) only costs time and rounding)."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    config = grpo_config(tmp_path, num_epochs=1, sample_guidance_scale=1.0, train_timesteps_per_forward=1)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset(False))
    sizes = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    try:
        trainer.train()
    finally:
        handle.remove()
    assert sizes and max(sizes) == config.train_batch_size, sizes


@pytest.mark.parametrize("window, fraction, expected", [(0.5, 1.0, 4), (0.3, 0.5, 1), (1.0, 1.0, 7)])
def test_timestep_window_trains_only_the_first_steps(tmp_path, window, fraction, expected):
    """train_timestep_window: the UNet is trained only at the first ceil(window * trainable) DDIM steps (7 trainable
    of 8 with the last one skipped), each sample on int(that * train_timestep_fraction) of them."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    config = grpo_config(tmp_path, num_epochs=1, sample_num_steps=8, sample_batch_size=8, sample_num_batches_per_epoch=1,
                         train_batch_size=8, train_timestep_window=window, train_timestep_fraction=fraction,
                         train_timesteps_per_forward=1)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset(False))
    batches, _, _, _ = trainer._rollout_epoch(0)
    samples = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    samples["advantages"] = torch.tensor([1.0, -1.0] * 4)
    seen = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: seen.append(args[1].detach().clone()))
    try:
        trainer._train_on_samples(samples, epoch=0, global_step=0)
    finally:
        handle.remove()
    first = math.ceil(7 * window - 1e-9)
    allowed = set(samples["timesteps"][0, :first].tolist())
    trained = torch.cat([t.reshape(-1) for t in seen]).tolist()
    assert set(trained) <= allowed, (sorted(set(trained)), sorted(allowed))
    per_sample = int(first * fraction)
    assert per_sample == expected and trainer.num_train_timesteps == expected
    # one forward per trained timestep, on the CFG-doubled batch of 8 samples
    assert len(seen) == expected
    if window == 1.0:
        assert set(trained) == set(samples["timesteps"][0, :7].tolist())  # every step but the last


def test_timestep_window_out_of_range_names_the_field(tmp_path):
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="train_timestep_window"):
            grpo_config(tmp_path, train_timestep_window=bad)


def test_learning_signal_brightness_rises(tmp_path):
    """A differentiable-free reward (mean brightness) rises over a fixed number of epochs with a fixed seed."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    config = grpo_config(tmp_path, num_epochs=8, sample_num_steps=6, sample_batch_size=8, sample_num_batches_per_epoch=1,
                         train_batch_size=8, train_learning_rate=1e-3, train_clip_range=0.2, train_num_inner_epochs=2,
                         train_timesteps_per_forward=5)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset(False))
    trainer.train()
    rewards = [r["reward_mean"] for r in trainer.log_history if "reward_mean" in r]
    assert len(rewards) == 8
    assert np.mean(rewards[-3:]) > np.mean(rewards[:2]) + 1e-3, rewards


def test_resume_continues_at_next_epoch_with_saved_state(tmp_path):
    config = grpo_config(tmp_path, num_epochs=2, save_freq=1)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset())
    trainer.train()
    ckpt_dir = os.path.join(trainer.project_dir, "checkpoints")
    assert sorted(os.listdir(ckpt_dir)) == ["checkpoint_0", "checkpoint_1"]
    saved = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}
    opt_state = {k: v["exp_avg"].clone() for k, v in trainer.optimizer.optimizer.state_dict()["state"].items()}
    with open(os.path.join(ckpt_dir, "checkpoint_1", "trainer_state.json")) as f:
        assert json.load(f)["epoch"] == 1

    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    config2 = grpo_config(tmp_path, num_epochs=3, save_freq=1, resume_from=trainer.project_dir)
    pipe2 = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    resumed = SafeDDPOGRPOTrainer(config2, brightness_reward, pipe2, train_dataset=prompt_dataset())
    assert resumed.first_epoch == 2 and resumed.global_step == trainer.global_step
    for n, p in pipe2.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, saved[n]), n
    state2 = resumed.optimizer.optimizer.state_dict()["state"]
    for k, v in opt_state.items():
        assert torch.equal(state2[k]["exp_avg"], v)
    resumed.train()
    assert [r["epoch"] for r in resumed.log_history if "reward_mean" in r] == [2]


def test_async_rewards_equal_sync_rewards(tmp_path):
    """TRL v0.23.1 called .result() on tensors with async_reward_computation=True and crashed."""
    rewards = {}
    for mode in (False, True):
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
        config = ddpo_config(tmp_path / str(mode), num_epochs=1, async_reward_computation=mode, max_workers=2,
                             sample_num_batches_per_epoch=2)
        trainer = DDPOTrainer(config, brightness_reward, lambda: ("a cat", {}), pipe)
        trainer.train()
        rewards[mode] = trainer.log_history[0]["reward_mean"]
    assert rewards[True] == pytest.approx(rewards[False], abs=1e-6)


def test_bf16_rewards_are_logged(tmp_path):
    """TRL v0.23.1 failed to log bf16 rewards (numpy has no bfloat16)."""
    def bf16_reward(images, prompts, metadata):
        return images.mean(dim=(1, 2, 3)).to(torch.bfloat16), {}

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    trainer = DDPOTrainer(ddpo_config(tmp_path, num_epochs=1), bf16_reward, lambda: ("a cat", {}), pipe)
    trainer.train()
    assert np.isfinite(trainer.log_history[0]["reward_mean"])


def test_fp16_full_finetune_keeps_fp32_trainable_weights(tmp_path):
    """TRL v0.23.1 cast the trained UNet to fp16 and the grad scaler raised "Attempting to unscale FP16 gradients"."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    trainer = DDPOTrainer(ddpo_config(tmp_path, num_epochs=1, mixed_precision="fp16"), brightness_reward,
                          lambda: ("a cat", {}), pipe)
    assert pipe.vae.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in trainer._trainable_params)
    trainer.train()
    # exercise the exact failure path: a real grad scaler unscaling this optimizer's gradients
    samples, data, _, plan = trainer._rollout_epoch(5)
    s = samples[0]
    embeds = torch.cat([trainer.neg_prompt_embed.expand_as(s["prompt_embeds"]), s["prompt_embeds"]])
    loss, *_ = trainer.calculate_loss(s["latents"][:, 0], s["timesteps"][:, 0], s["next_latents"][:, 0],
                                      s["log_probs"][:, 0], torch.ones(len(plan.prompts)), embeds)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(loss).backward()
    scaler.unscale_(trainer.optimizer.optimizer)


def test_default_pipeline_logs_without_accelerator(caplog):
    """TRL v0.23.1's pipeline logged through accelerate before any Accelerator existed (RuntimeError)."""
    from accelerate.state import PartialState

    PartialState._reset_state()
    with caplog.at_level(logging.DEBUG):
        pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
        pipe(prompt="a cat", num_inference_steps=2, output_type="pt", unsupported_argument=1)
    assert "unsupported_argument" in caplog.text


def test_lora_save_pretrained_loads_back_into_a_pipeline(tmp_path):
    """TRL v0.23.1's saved LoRA weights did not load back; ours reproduce the trained UNet exactly."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True, lora_rank=4, lora_alpha=8)
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path, num_epochs=1), brightness_reward, pipe,
                                  train_dataset=prompt_dataset())
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_pretrained(str(out))
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "README.md").is_file()
    fresh = tiny_sd_pipeline()
    fresh.load_lora_weights(str(out))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    emb = pipe.encode_prompts(["a cat", "a dog"]).float()
    with torch.no_grad():
        torch.testing.assert_close(fresh.unet(x, t, emb).sample, pipe.unet(x, t, emb).sample, rtol=0, atol=1e-6)


def test_reward_errors_name_the_culprit(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)

    def short(images, prompts, metadata):
        return torch.zeros(len(prompts) - 1), {}

    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path), short, pipe, train_dataset=prompt_dataset())
    with pytest.raises(ValueError, match=r"reward_function returned rewards of shape \(3,\) for 4 images"):
        trainer.train()

    def wrong_type(images, prompts, metadata):
        return ["high"] * len(prompts), {}

    trainer.reward_fn = wrong_type
    with pytest.raises(ValueError, match="reward_function returned rewards of type list"):
        trainer.train()

    def raising(images, prompts, metadata):
        raise KeyError("boom")

    trainer.reward_fn = raising
    with pytest.raises(RewardFunctionError, match="epoch 0, batch 0"):
        trainer.train()


def test_bad_dataset_and_groups(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    with pytest.raises(ValueError, match="no 'prompt' column"):
        SafeDDPOGRPOTrainer(grpo_config(tmp_path), brightness_reward, pipe, train_dataset=Dataset.from_dict({"text": ["a"]}))
    with pytest.raises(ValueError, match="num_generations"):
        grpo_config(tmp_path, num_generations=1)
    with pytest.raises(ValueError, match="exactly one of train_dataset"):
        SafeDDPOGRPOTrainer(grpo_config(tmp_path), brightness_reward, pipe)
    with pytest.raises(ValueError, match="reward_weights has 1 entries for 2 reward functions"):
        SafeDDPOGRPOTrainer(grpo_config(tmp_path, reward_weights=[1.0]), [brightness_reward, brightness_reward], pipe,
                            train_dataset=prompt_dataset())


def test_nonfinite_rewards_get_zero_advantage_and_are_counted(tmp_path):
    def some_nan(images, prompts, metadata):
        r = images.mean(dim=(1, 2, 3)).clone()
        r[0] = float("nan")
        r[1] = float("inf")
        return r, {}

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path, num_epochs=1), some_nan, pipe, train_dataset=prompt_dataset())
    seen = {}
    original = trainer._compute_advantages

    def spy(rewards, prompts, metadata=None):
        seen["adv"] = original(rewards, prompts, metadata)
        return seen["adv"]

    trainer._compute_advantages = spy
    trainer.train()
    log = next(r for r in trainer.log_history if "reward_mean" in r)
    assert log["reward_nonfinite"] == 4  # 2 per sampling batch, 2 batches
    adv = seen["adv"]
    assert np.all(np.isfinite(adv)) and adv[0] == 0 and adv[1] == 0
    assert all(np.isfinite(r.get("train/loss", 0.0)) for r in trainer.log_history)


def test_combined_rewards_are_logged_per_component(tmp_path):
    def darkness(images, prompts, metadata):
        return 1 - images.mean(dim=(1, 2, 3)), {}

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    config = grpo_config(tmp_path, num_epochs=1, reward_weights=[2.0, 0.5])
    trainer = SafeDDPOGRPOTrainer(config, [brightness_reward, darkness], pipe, train_dataset=prompt_dataset())
    trainer.train()
    log = next(r for r in trainer.log_history if "reward_mean" in r)
    b, d = log["reward/brightness_reward_mean"], log["reward/darkness_mean"]
    assert b + d == pytest.approx(1.0, abs=1e-5)
    assert log["reward_mean"] == pytest.approx(2.0 * b + 0.5 * d, abs=1e-5)


def test_trainable_modules_train_only_the_named_layers_and_the_card_says_so(tmp_path):
    torch.manual_seed(0)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False, trainable_modules="attn2")
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    config = grpo_config(tmp_path, num_epochs=1, beta=0.1, kl_mode="branches", sample_guidance_scale=3.0,
                         train_timestep_window=0.5, train_timestep_fraction=0.75)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset())
    trainer.train()
    moved = {n for n, p in trainer.unet.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved, "no cross-attention parameter was updated"
    assert all("attn2" in n for n in moved), sorted(n for n in moved if "attn2" not in n)
    out = tmp_path / "model"
    trainer.save_pretrained(str(out))
    card = (out / "README.md").read_text()
    assert "part of the UNet" in card and "attn2" in card
    labels = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in card.splitlines() if line.count("|") >= 3}
    assert labels["KL compares"] == "branches" and labels["KL coefficient (beta)"] == "0.1"
    assert labels["Trained timestep window (first fraction of each trajectory)"] == "0.5"
    assert labels["Trained fraction of the window's timesteps"] == "0.75"
