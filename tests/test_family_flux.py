"""The FLUX.1 family: a tiny FLUX pipeline built from configs trains with Flow-GRPO's SDE policy (no classifier-free
guidance, the distilled guidance as a transformer input), saves in the stock diffusers formats, and names its bad
inputs."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline

from conftest import brightness_reward
from flow_family_checks import (
    PROMPTS,
    assert_same_velocity,
    check_bf16_checkpoint_resume,
    check_brightness_reward_rises,
    check_training_changes_the_trainable_parameters_only,
    randomize_lora,
    train_and_save,
    train_lora_and_load_into_stock,
)
from trl_safediffusion import DefaultDDPOFluxPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.testing_utils import tiny_flux_pipeline

SEQ = 8  # T5 tokens: kept short for speed
SIZE = 16  # pixels: 8 x 8 latents, 16 packed tokens


def _pipe(use_lora=True, guidance_embeds=True, **kw):
    kw = {"sample_height": SIZE, "sample_width": SIZE, **kw}
    return DefaultDDPOFluxPipeline(tiny_flux_pipeline(guidance_embeds=guidance_embeds), use_lora=use_lora,
                                   max_sequence_length=SEQ, **kw)


def _config(tmp_path, **kw):
    base = dict(num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=2,
                train_batch_size=4, num_generations=4, mixed_precision="no", train_learning_rate=1e-3,
                train_clip_range=0.2, save_freq=0, logdir=str(tmp_path / "logs"), sample_eta=0.7,
                sample_guidance_scale=1.0, beta=0.01)
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


def _velocity(transformer, x, t, embeds, pooled, guidance=3.5):
    """The stock pipeline's transformer call, written out: position ids of a 16 x 16 image, `timestep / 1000`."""
    img_ids = FluxPipeline._prepare_latent_image_ids(1, SIZE // 4, SIZE // 4, x.device, x.dtype)
    txt_ids = torch.zeros(embeds.shape[1], 3)
    g = torch.full((x.shape[0],), guidance) if transformer.config.guidance_embeds else None
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=t / 1000, guidance=g, pooled_projections=pooled,
                           encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]


@pytest.mark.parametrize("use_lora", [True, False])
def test_training_changes_the_trainable_parameters_only(tmp_path, use_lora):
    batches = check_training_changes_the_trainable_parameters_only(_pipe(use_lora=use_lora), _config(tmp_path),
                                                                   use_lora)
    assert batches[0]["latents"].shape == (4, 4, 16, 16)  # (B, T, packed tokens, 4 x latent channels)


def test_brightness_reward_rises(tmp_path):
    config = _config(tmp_path, num_epochs=4, sample_num_steps=4, sample_batch_size=8, sample_num_batches_per_epoch=1,
                     train_batch_size=8, num_generations=4, train_learning_rate=1e-2, train_num_inner_epochs=2,
                     beta=0.0, seed=0)
    # seeds 0-3 all rise, by 1.5e-3 to 5.2e-3 (the per-sample brightness std is ~1e-3)
    check_brightness_reward_rises(_pipe(use_lora=False), config, margin=5e-4)


def test_lora_save_loads_into_the_stock_pipeline(tmp_path):
    pipe = _pipe(use_lora=True, lora_rank=4, lora_alpha=8)
    out = tmp_path / "lora"
    stock, inputs, trained = train_lora_and_load_into_stock(
        pipe, _config(tmp_path, num_epochs=1, train_learning_rate=3e-3), out, tiny_flux_pipeline, _velocity)
    # sampling: the stock pipeline's Euler ODE (distilled guidance 3.5, fixed packed latents) is the adapter's rollout
    # at noise level 0
    init = torch.randn(2, *pipe.latent_shape(), generator=torch.Generator().manual_seed(1))
    ours = pipe(["a cat", "a dog"], num_inference_steps=4, eta=0.0, latents=init, output_type="pt")
    theirs = stock(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.5, latents=init.clone(),
                   output_type="pt", max_sequence_length=SEQ, height=SIZE, width=SIZE)
    torch.testing.assert_close(theirs.images, ours.images, rtol=0, atol=1e-5)
    # the checkpoint hook loads the same weights back into the adapter
    fresh = _pipe(use_lora=True, lora_rank=4, lora_alpha=8)
    fresh.load_lora_into_transformer(str(out))
    torch.testing.assert_close(_velocity(fresh.transformer, *inputs), trained, rtol=0, atol=1e-6)


def test_full_save_loads_with_from_pretrained(tmp_path):
    pipe = _pipe(use_lora=False)
    out = tmp_path / "full"
    train_and_save(pipe, _config(tmp_path, num_epochs=1), out)
    loaded = FluxPipeline.from_pretrained(str(out))
    trained = pipe.transformer.state_dict()
    for k, v in loaded.transformer.state_dict().items():
        assert torch.equal(v, trained[k].to(v.dtype)), k
    assert_same_velocity(loaded.transformer, pipe, _velocity, tol=0)
    # the saved text encoders and tokenizers give the same conditioning
    reloaded = DefaultDDPOFluxPipeline(loaded, max_sequence_length=SEQ, sample_height=SIZE, sample_width=SIZE)
    for key, value in reloaded.encode_conditioning(["a cat"]).items():
        torch.testing.assert_close(value, pipe.encode_conditioning(["a cat"])[key], rtol=0, atol=0)


def test_fused_lora_save_loads_with_from_pretrained(tmp_path):
    pipe = _pipe(use_lora=True)
    randomize_lora(pipe)
    pipe.save_pretrained(str(tmp_path / "fused"), fuse_lora=True)
    loaded = FluxPipeline.from_pretrained(str(tmp_path / "fused"))
    assert_same_velocity(loaded.transformer, pipe, _velocity, tol=1e-5)


def test_conditioning_packing_and_schedule():
    pipe = _pipe(use_lora=True)
    cond = pipe.encode_conditioning(["a cat", "a dog", "a cat"])
    assert cond["prompt_embeds"].shape == (3, SEQ, 32) and cond["pooled_prompt_embeds"].shape == (3, 32)
    assert torch.equal(cond["prompt_embeds"][0], cond["prompt_embeds"][2])
    embeds, pooled, _ = pipe.sd_pipeline.encode_prompt("a dog", device="cpu", max_sequence_length=SEQ)
    torch.testing.assert_close(cond["prompt_embeds"][1:2], embeds)
    torch.testing.assert_close(cond["pooled_prompt_embeds"][1:2], pooled)
    assert pipe.latent_shape() == (16, 16)  # (8 / 2) * (8 / 2) tokens of 4 latent channels x 2 x 2
    assert pipe.latent_shape(32, 16) == (32, 16)
    assert _pipe(sample_height=32, sample_width=8).latent_shape() == (16, 16)
    # decoding unpacks as the stock pipeline does
    spatial = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    packed = FluxPipeline._pack_latents(spatial, 2, 4, 8, 8)
    vae = pipe.vae
    with torch.no_grad():
        expected = (vae.decode(spatial / vae.config.scaling_factor + vae.config.shift_factor).sample / 2 + 0.5)
        torch.testing.assert_close(pipe.decode_latents(packed), expected.clamp(0, 1))
    # the stock schedule: linspace(1, 1 / T, T) shifted by the resolution's mu
    stock = tiny_flux_pipeline()
    stock(["a cat"], num_inference_steps=3, output_type="latent", max_sequence_length=SEQ, height=SIZE, width=SIZE)
    torch.testing.assert_close(pipe.set_timesteps(3), stock.scheduler.timesteps)
    with pipe.at_resolution(32, 32):
        stock(["a cat"], num_inference_steps=3, output_type="latent", max_sequence_length=SEQ, height=32, width=32)
        torch.testing.assert_close(pipe.set_timesteps(3), stock.scheduler.timesteps)
    assert pipe.latent_shape() == (16, 16)
    # schnell: no guidance embedding; a rollout at another resolution decodes at it
    schnell = _pipe(guidance_embeds=False)
    out = schnell.rollout(schnell.encode_conditioning(["a cat"]), num_inference_steps=2, eta=0.7, height=32,
                          width=16, generators=[torch.Generator().manual_seed(0)])
    assert out.images.shape == (1, 3, 32, 16) and torch.isfinite(out.log_probs).all()


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="sample_height must be a positive multiple of vae_scale_factor \\* 2 = 4"):
        _pipe(sample_height=18)
    with pytest.raises(ValueError, match="sample_width"):
        _pipe(sample_width=2)
    with pytest.raises(ValueError, match="height"):
        _pipe().latent_shape(height=10)
    flux = tiny_flux_pipeline()
    flux.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="scheduler must be a FlowMatchEulerDiscreteScheduler.*DDIMScheduler"):
        DefaultDDPOFluxPipeline(flux)
    flux.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="noise_level"):
        DefaultDDPOFluxPipeline(flux, noise_level=-0.5)
    with pytest.raises(ValueError, match="max_sequence_length"):
        DefaultDDPOFluxPipeline(flux, max_sequence_length=1024)
    with pytest.raises(ValueError, match="trainable_modules"):
        DefaultDDPOFluxPipeline(tiny_flux_pipeline(), use_lora=True, trainable_modules="attn")
    pipe = _pipe()
    pipe.set_timesteps(4)
    x = torch.randn(1, *pipe.latent_shape())
    cond = pipe.encode_conditioning(["a"])
    with pytest.raises(ValueError, match="noise_level"):
        pipe.step_distribution(pipe.transformer, x, pipe.scheduler.timesteps[0], cond, eta=-1.0)
    with pytest.raises(ValueError, match="sample_guidance_scale must be 1 .*guidance="):
        pipe.step_distribution(pipe.transformer, x, pipe.scheduler.timesteps[0], cond, cond, guidance_scale=3.0)
    with pytest.raises(ValueError, match="sample_guidance_scale"):
        SafeDDPOGRPOTrainer(_config(tmp_path, sample_guidance_scale=5.0), brightness_reward, pipe,
                            train_dataset=PROMPTS).train()
    with pytest.raises(ValueError, match="packed latents"):
        pipe.decode_latents(torch.randn(1, 9, 16))


@pytest.mark.parametrize("use_lora", [True, False])
def test_bf16_checkpoint_resume(tmp_path, use_lora):
    trainer = check_bf16_checkpoint_resume(_pipe, lambda **kw: _config(tmp_path, **kw), use_lora)
    trainer.save_pretrained(str(tmp_path / "saved"))
    if not use_lora:  # the saved folder holds the base's fp32 frozen components and the trained transformer
        loaded = FluxPipeline.from_pretrained(str(tmp_path / "saved"))
        assert loaded.text_encoder_2.dtype == torch.float32 and loaded.transformer.dtype == torch.float32
