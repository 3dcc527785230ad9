"""The SDXL family (`DefaultDDPOStableDiffusionXLPipeline`) on a tiny SDXL built from configs: training changes only the
trainable parameters, the reward rises, saved folders load into stock diffusers and reproduce the trained model, and
bad arguments are named."""

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import StableDiffusionXLPipeline

from conftest import brightness_reward
from trl_safediffusion import (
    DefaultDDPOStableDiffusionPipeline,
    DefaultDDPOStableDiffusionXLPipeline,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
)
from trl_safediffusion.pipelines.stable_diffusion import vae_decode
from trl_safediffusion.testing_utils import tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPTS = [f"a photo of object {i}" for i in range(4)]
SIZE = 16  # the tiny SDXL's native image size (sample_size 8, VAE factor 2)


def grpo_config(tmp_path, **kw):
    base = dict(
        num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=4,
        num_generations=4, mixed_precision="no", train_learning_rate=3e-3, train_clip_range=0.2, save_freq=0,
        logdir=str(tmp_path / "logs"), sample_guidance_scale=3.0, train_timesteps_per_forward=3,
    )
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def train(tmp_path, use_lora, **kw):
    pipe = DefaultDDPOStableDiffusionXLPipeline(tiny_sdxl_pipeline(seed=0), use_lora=use_lora)
    before = {name: snapshot(module) for name, module in pipe._components()}
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path, **kw), brightness_reward, pipe,
                                  train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    trainer.train()
    return pipe, before, trainer


def unet_inputs(pipe, seed=0):
    """A fixed UNet input: noise, a timestep and the conditioning of two prompts, the empty one first."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *pipe.latent_shape()), generator=generator)
    return x, torch.tensor([501, 501]), pipe.encode_conditioning(["", "a photo of object 1"])


def unet_output(unet, x, t, cond):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=cond["prompt_embeds"],
                    added_cond_kwargs={"text_embeds": cond["pooled_prompt_embeds"],
                                       "time_ids": cond["add_time_ids"]}).sample


def adapter_ddim_images(pipe, prompt, noise):
    """Deterministic DDIM (eta 0) images from `noise` with the adapter's guided prediction and decoding."""
    cond, neg = pipe.encode_conditioning([prompt]), pipe.encode_conditioning([""])
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(4)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            pred = pipe.predict(pipe.unet, scheduler.scale_model_input(x, t), t, cond, neg, 3.0)
            x = scheduler.step(pred, t, x, eta=0.0).prev_sample
        return pipe.decode_latents(x)


def check_matches_stock(pipe, stock):
    """`stock` (a diffusers StableDiffusionXLPipeline) computes what the trained adapter does: the same
    conditioning, the same UNet outputs, the same deterministic images."""
    pipe.clear_prompt_cache()  # encoded in the same batch as below (CPU matmuls may round by batch size)
    x, t, cond = unet_inputs(pipe)
    with torch.no_grad():
        prompt_embeds, _, pooled, _ = stock.encode_prompt(["", "a photo of object 1"], device="cpu",
                                                           do_classifier_free_guidance=False)
    assert torch.equal(prompt_embeds[1], cond["prompt_embeds"][1])
    assert torch.equal(pooled[1], cond["pooled_prompt_embeds"][1])
    time_ids = stock._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), dtype=torch.float32,
                                       text_encoder_projection_dim=stock.text_encoder_2.config.projection_dim)
    assert torch.equal(time_ids.expand(2, -1), cond["add_time_ids"])
    assert torch.equal(unet_output(stock.unet, x, t, cond), unet_output(pipe.unet, x, t, cond))
    noise = torch.randn((1, *pipe.latent_shape()), generator=torch.Generator().manual_seed(1))
    ours = adapter_ddim_images(pipe, "a photo of object 1", noise)
    theirs = stock("a photo of object 1", height=SIZE, width=SIZE, num_inference_steps=4, guidance_scale=3.0,
                   eta=0.0, latents=noise.clone(), output_type="pt").images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)  # the unconditional branch: zeros in both


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("sdxl-lora"), use_lora=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("sdxl-full"), use_lora=False, beta=0.05, kl_mode="branches")


def test_lora_training_changes_only_the_lora_parameters(lora_run):
    pipe, before, trainer = lora_run
    changed = [n for n, p in pipe.unet.named_parameters() if "lora_" in n and not torch.equal(p, before["unet"][n])]
    assert changed
    for component, module in pipe._components():
        for n, p in module.named_parameters():
            if component != "unet" or "lora_" not in n:
                assert torch.equal(p, before[component][n]), f"frozen {component} weight {n} changed"
    assert [c for c, _ in pipe._components()] == ["vae", "text_encoder", "text_encoder_2", "unet"]
    assert [r["epoch"] for r in trainer.log_history if "reward_mean" in r] == [0, 1]


def test_full_finetune_changes_the_unet_only(full_run):
    pipe, before, trainer = full_run
    changed = [n for n, p in pipe.unet.named_parameters() if not torch.equal(p, before["unet"][n])]
    assert len(changed) > len(before["unet"]) // 2
    for component, module in pipe._components():
        if component != "unet":
            assert all(torch.equal(p, before[component][n]) for n, p in module.named_parameters()), component
    assert all(torch.equal(p, before["unet"][n]) for n, p in trainer.ref_unet.named_parameters())
    assert any("train/kl" in r for r in trainer.log_history)


def test_samples_carry_the_sdxl_conditioning(tmp_path):
    pipe = DefaultDDPOStableDiffusionXLPipeline(tiny_sdxl_pipeline(seed=0), use_lora=True)
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path), brightness_reward, pipe,
                                  train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    batches, _, _, _ = trainer._rollout_epoch(0)
    s = batches[0]
    assert s["prompt_embeds"].shape == (4, 77, 80)  # D1 + D2 = 32 + 48
    assert s["pooled_prompt_embeds"].shape == (4, 32)
    assert s["add_time_ids"].tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 4
    assert torch.count_nonzero(trainer.negative_conditioning["prompt_embeds"]) == 0  # force_zeros_for_empty_prompt
    # the stored log-probabilities are the policy's: an untrained policy has ratio 1
    terms = trainer.compute_loss_terms(
        s["latents"][:, 1], s["timesteps"][:, 1], s["next_latents"][:, 1], s["log_probs"][:, 1], torch.ones(4),
        {k: s[k] for k in ("prompt_embeds", "pooled_prompt_embeds", "add_time_ids")},
    )
    assert float(terms["loss"].detach()) == pytest.approx(-1.0, abs=1e-5)


def test_brightness_reward_rises(tmp_path):
    pipe = DefaultDDPOStableDiffusionXLPipeline(tiny_sdxl_pipeline(seed=0), use_lora=False)
    config = grpo_config(tmp_path, num_epochs=6, sample_num_steps=5, sample_batch_size=8, train_batch_size=8,
                         num_generations=4, train_learning_rate=1e-3, train_num_inner_epochs=2,
                         train_timesteps_per_forward=4, sample_guidance_scale=1.0)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    trainer.train()
    rewards = [r["reward_mean"] for r in trainer.log_history if "reward_mean" in r]
    assert len(rewards) == 6
    assert np.mean(rewards[-3:]) > np.mean(rewards[:2]) + 1e-3, rewards  # about +2e-3 (batch std about 1e-3)


def test_lora_save_loads_into_stock_sdxl(lora_run, tmp_path):
    pipe = lora_run[0]
    pipe.save_pretrained(str(tmp_path / "lora"))
    stock = tiny_sdxl_pipeline(seed=0)
    stock.load_lora_weights(str(tmp_path / "lora"))
    check_matches_stock(pipe, stock)

    pipe.save_pretrained(str(tmp_path / "fused"), fuse_lora=True)
    fused = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "fused"), add_watermarker=False)
    x, t, cond = unet_inputs(pipe)
    torch.testing.assert_close(unet_output(fused.unet, x, t, cond), unet_output(pipe.unet, x, t, cond),
                               atol=1e-5, rtol=1e-5)


def test_full_save_loads_into_stock_sdxl(full_run, tmp_path):
    pipe = full_run[0]
    pipe.save_pretrained(str(tmp_path / "full"))
    stock = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "full"), add_watermarker=False)
    check_matches_stock(pipe, stock)


def test_loads_from_a_local_folder(tmp_path):
    tiny_sdxl_pipeline(seed=0).save_pretrained(str(tmp_path / "base"))
    pipe = DefaultDDPOStableDiffusionXLPipeline(str(tmp_path / "base"), use_lora=False, sample_height=8,
                                                sample_width=12)
    assert pipe.pretrained_model_name == str(tmp_path / "base")
    assert pipe.latent_shape() == (4, 4, 6)
    assert pipe.encode_conditioning(["a cat"])["add_time_ids"].tolist() == [[8, 12, 0, 0, 8, 12]]
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"


@pytest.mark.parametrize("argument, value", [("sample_height", 15), ("sample_width", 9), ("sample_width", 0)])
def test_resolution_not_a_multiple_of_the_vae_factor_names_the_argument(argument, value):
    base = tiny_sdxl_pipeline(seed=0)
    scheduler = base.scheduler
    with pytest.raises(ValueError, match=rf"{argument} must be a positive multiple of the VAE downsampling factor 2"):
        DefaultDDPOStableDiffusionXLPipeline(base, **{argument: value})
    assert not hasattr(base.unet, "peft_config") and base.scheduler is scheduler  # checked before any change


def test_pipeline_of_the_wrong_class_names_what_is_supported():
    with pytest.raises(ValueError, match="pretrained_model_name must be a Hub id, a local folder or a "
                                         "diffusers StableDiffusionXLPipeline, got StableDiffusionPipeline"):
        DefaultDDPOStableDiffusionXLPipeline(tiny_sd_pipeline(seed=0))
    with pytest.raises(ValueError, match="diffusers StableDiffusionPipeline, got StableDiffusionXLPipeline"):
        DefaultDDPOStableDiffusionPipeline(tiny_sdxl_pipeline(seed=0))


def test_float16_vae_with_force_upcast_decodes_in_float32():
    pipe = DefaultDDPOStableDiffusionXLPipeline(tiny_sdxl_pipeline(seed=0), use_lora=True)
    pipe.vae.to(torch.float16)
    latents = torch.randn((2, *pipe.latent_shape()), generator=torch.Generator().manual_seed(0))
    upcast = copy.deepcopy(pipe.vae).to(torch.float32)
    images = pipe.decode_latents(latents)
    assert images.dtype == torch.float32 and pipe.vae.dtype == torch.float16
    assert torch.equal(images, vae_decode(upcast, latents).clamp(0, 1))


@pytest.mark.parametrize("use_lora", [True, False])
def test_checkpoint_resume_restores_the_trained_unet(tmp_path, use_lora):
    pipe, _, trainer = train(tmp_path, use_lora=use_lora, num_epochs=1, save_freq=1)
    trained = snapshot(pipe.unet)
    resumed_pipe = DefaultDDPOStableDiffusionXLPipeline(tiny_sdxl_pipeline(seed=0), use_lora=use_lora)
    resumed = SafeDDPOGRPOTrainer(grpo_config(tmp_path, num_epochs=1, save_freq=1, resume_from=trainer.project_dir),
                                  brightness_reward, resumed_pipe, train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    assert resumed.first_epoch == 1
    assert all(torch.equal(p, trained[n]) for n, p in resumed_pipe.unet.named_parameters())


def test_bf16_training_saves_the_base_text_encoders(tmp_path):
    base = str(tmp_path / "base")
    tiny_sdxl_pipeline(seed=0).save_pretrained(base)
    pipe = DefaultDDPOStableDiffusionXLPipeline(base, use_lora=False)
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path, num_epochs=1, mixed_precision="bf16"), brightness_reward, pipe,
                                  train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    trainer.train()
    assert pipe.sd_pipeline.text_encoder_2.dtype == torch.bfloat16 and pipe.unet.dtype == torch.float32
    pipe.save_pretrained(str(tmp_path / "out"))
    for name in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "text_encoder_2/model.safetensors"):
        with open(tmp_path / "base" / name, "rb") as a, open(tmp_path / "out" / name, "rb") as b:
            assert a.read() == b.read(), name
    stock = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "out"), add_watermarker=False)
    assert stock.text_encoder_2.dtype == torch.float32 and stock.unet.dtype == torch.float32
